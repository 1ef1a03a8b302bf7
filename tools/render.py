"""Turn GOT's formatted output (--ocr_type format) into self-contained HTML pages or Markdown files.

    python tools/infer.py --ocr_type format --image_file scans/ report.pdf --output results.jsonl
    python tools/render.py --predictions results.jsonl --out_dir pages/
    python tools/render.py --predictions results.jsonl --out_dir pages/ --format md

One file per result, named as tools/infer.py names its text files: <stem>.html (or .md), <stem>_page<N>.html for a
PDF page. An HTML page shows the input image beside the text when the image's file is found (at the path in the
JSONL, or by file name in --images_dir): an image file is embedded as it is (as PNG if browsers cannot show its
format, e.g. TIFF), a PDF page is rendered with pypdfium2 at 100 DPI. Results with an error are skipped and
reported on stderr. The paths written are printed on stdout, one a line; progress goes to stderr.
"""

from paddle_got.process import tune_process

tune_process()  # before Paddle loads (paddle_got/process.py)

import os
import sys

from tqdm import tqdm

from paddle_got.cli import ArgumentParser, run_cli
from paddle_got.errors import GOTError
from paddle_got.outputs import read_results, text_file_name, write_atomic
from paddle_got.render import document_html, to_markdown

SUFFIXES = {"html": ".html", "md": ".md"}


def parse_args():
    parser = ArgumentParser(__doc__)
    parser.add_argument("--predictions", required=True, help="results JSONL written by tools/infer.py --output")
    parser.add_argument("--out_dir", required=True, help="directory the pages are written to (created if missing)")
    parser.add_argument("--format", default="html", choices=tuple(SUFFIXES), help="self-contained HTML or Markdown")
    parser.add_argument(
        "--images_dir", help="look for the input images here by file name (default: at the paths in the JSONL)"
    )
    return parser.parse_args()


def check_out_dir(path: str) -> None:
    """GOTError unless `path` is a directory, or can be made as one inside an existing directory."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise GOTError(f"--out_dir {path} is a file, not a directory.")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(path) and not os.path.isdir(parent):
        raise GOTError(f"--out_dir {path} cannot be made: the directory {parent} does not exist.")


def output_paths(records: list, out_dir: str, suffix: str) -> list:
    """Where each result is written; GOTError when two results would be written to the same file."""
    paths = []
    for record in records:
        path = os.path.join(out_dir, text_file_name(record["image"], record.get("page"), suffix))
        if path in paths:
            raise GOTError(f"Two results would both be written to {path}: render them into separate directories.")
        paths.append(path)
    return paths


def input_image(record: dict, images_dir):
    """Where the input's image is: at the path in the JSONL, or by file name in `images_dir`."""
    if images_dir:
        return os.path.join(images_dir, os.path.basename(record["image"]))
    return record["image"]


def main():
    args = parse_args()
    records = read_results(args.predictions)
    check_out_dir(args.out_dir)
    if args.images_dir and not os.path.isdir(args.images_dir):
        raise GOTError(f"--images_dir {args.images_dir} is not a directory.")
    for record in records:
        if record.get("error") is not None:
            print(f"error: {record['error']} (skipped)", file=sys.stderr)
    done = [record for record in records if record.get("error") is None]
    paths = output_paths(done, args.out_dir, SUFFIXES[args.format])
    for record, path in tqdm(list(zip(done, paths, strict=True)), desc="Rendering", unit="page", disable=len(done) < 2):
        if args.format == "html":
            image = input_image(record, args.images_dir)
            write_atomic(path, document_html([(record["text"], image, record.get("page"))]))
        else:
            write_atomic(path, to_markdown(record["text"]) + "\n")
        print(path, flush=True)


if __name__ == "__main__":
    run_cli(main)
