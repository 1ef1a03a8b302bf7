"""Turn GOT's results into self-contained HTML pages or Markdown files, without a model.

    python tools/infer.py --ocr_type format --image_file scans/ report.pdf --output results.jsonl
    python tools/render.py --predictions results.jsonl --out_dir pages/
    python tools/render.py --predictions results.jsonl --out_dir pages/ --format md

One file per input, named after it: <stem>.html (or .md); the pages of a PDF go into one file, in order, one
section each. An HTML page shows each page's image beside its text when the input's file is found (at the path in
the JSONL, or by file name in --images_dir): an image file is embedded as it is (as PNG if browsers cannot show its
format, e.g. TIFF), a PDF page is rendered with pypdfium2 at 100 DPI. Formatted text (--ocr_type format) is
rendered; plain text is shown as it was read. Results with an error are skipped and reported on stderr. The paths
written are printed on stdout, one a line; progress goes to stderr.
"""

from paddle_got.process import tune_process

tune_process()  # before Paddle loads (paddle_got/process.py)

import os
import sys

from tqdm import tqdm

from paddle_got.cli import ArgumentParser, run_cli
from paddle_got.constants import FORMATTED, OCR_TYPES
from paddle_got.errors import GOTError
from paddle_got.outputs import document_key, file_text, read_results, run_settings, text_file_name, write_atomic

SUFFIXES = {"html": ".html", "md": ".md"}


def parse_args():
    parser = ArgumentParser(__doc__)
    parser.add_argument("--predictions", required=True, help="results JSONL written by tools/infer.py --output")
    parser.add_argument("--out_dir", required=True, help="directory the pages are written to (created if missing)")
    parser.add_argument("--format", default="html", choices=tuple(SUFFIXES), help="self-contained HTML or Markdown")
    parser.add_argument(
        "--images_dir", help="look for the input images here by file name (default: at the paths in the JSONL)"
    )
    parser.add_argument(
        "--ocr_type",
        choices=OCR_TYPES,
        help=f"how the texts were read (default: as the run's report beside --predictions says, else {FORMATTED})",
    )
    return parser.parse_args()


def check_out_dir(path: str) -> None:
    """GOTError unless `path` is a directory, or can be made as one inside an existing directory."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise GOTError(f"--out_dir {path} is a file, not a directory.")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(path) and not os.path.isdir(parent):
        raise GOTError(f"--out_dir {path} cannot be made: the directory {parent} does not exist.")


def by_input(records: list, predictions: str) -> list:
    """The records grouped by input file (a PDF's pages together, in order of appearance); GOTError when a page
    appears twice."""
    inputs, seen = {}, set()
    for record in records:
        key = document_key(record["image"], record.get("page"))
        if key in seen:
            raise GOTError(f"{predictions} holds two results for {key}.")
        seen.add(key)
        inputs.setdefault(record["image"], []).append(record)
    return list(inputs.values())


def output_paths(inputs: list, out_dir: str, suffix: str) -> list:
    """Where each input's file is written; GOTError when two inputs would be written to the same file."""
    paths = []
    for records in inputs:
        path = os.path.join(out_dir, text_file_name(records[0]["image"], None, suffix))
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
    ocr_type = args.ocr_type or (run_settings(args.predictions) or {}).get("ocr_type", FORMATTED)
    for record in records:
        if record.get("error") is not None:
            print(f"error: {record['error']} (skipped)", file=sys.stderr)
    inputs = by_input([record for record in records if record.get("error") is None], args.predictions)
    suffix = SUFFIXES[args.format]
    paths = output_paths(inputs, args.out_dir, suffix)
    for pages, path in tqdm(
        list(zip(inputs, paths, strict=True)), desc="Rendering", unit="file", disable=len(paths) < 2
    ):
        located = [{**page, "image": input_image(page, args.images_dir)} for page in pages]
        write_atomic(path, file_text(located, suffix, ocr_type))
        print(path, flush=True)


if __name__ == "__main__":
    run_cli(main)
