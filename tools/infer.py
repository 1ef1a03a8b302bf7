"""Read images and PDFs with GOT-OCR2.0.

    python tools/infer.py --ocr_type format --image_file page.png
    python tools/infer.py --ocr_type format --image_file page.png --output page.html
    python tools/infer.py --image_file scans/ --batch_size 4 --output results.jsonl
    python tools/infer.py --image_file slide.png --color red
    python tools/infer.py --image_file report.pdf --multi_page --ocr_type format
    python tools/infer.py --image_file archive/ --recursive --output results.jsonl --resume
    python -m paddle.distributed.launch --nproc_per_node 2 tools/infer.py --image_file list.txt --output results.jsonl

One input: stdout holds exactly the recognised text and a newline. Several inputs: one JSON object per line,
{"image": ..., "text": ...} (PDF pages add "page"), in input order. Logs and progress go to stderr. A bad input is
reported on stderr in one line and skipped; the exit code is then 2.

With --output x.jsonl or a directory, each result is kept as soon as it is made, and --resume continues a run that
was stopped (even killed) from where it was. Under paddle.distributed.launch each process reads its share of the
inputs; rank 0 writes the results in input order when all are done, x.jsonl.errors.jsonl (the inputs that failed)
and x.jsonl.report.json (counts and speeds).
"""

from paddle_got.process import tune_process

tune_process()  # before Paddle loads (paddle_got/process.py)

import os
import sys

from tqdm import tqdm

from paddle_got.cli import (
    EXIT_BAD_INPUT,
    ArgumentParser,
    add_device_arguments,
    add_model_arguments,
    positive_int,
    run_cli,
    share,
)
from paddle_got.constants import COLORS, MAX_CROPS, MAX_NEW_TOKENS, OCR_TYPES
from paddle_got.device import join_launch, leave_launch
from paddle_got.errors import GOTError
from paddle_got.hub import model_source
from paddle_got.inputs import Shard, expand_inputs, mark_box_misfits
from paddle_got.outputs import RENDERINGS, check_output, json_line, output_kind, write_file
from paddle_got.pipeline import GOT, check_read_options, check_stream, default_ngram_size
from paddle_got.processing import parse_box
from paddle_got.runs import RunStore, documents_by_key, read_run, summary_line, text_settings


def parse_args():
    parser = ArgumentParser(__doc__)
    add_model_arguments(parser, "checkpoint directory (any layout) or hub id")
    parser.add_argument(
        "--image_file",
        nargs="+",
        required=True,
        help="image files, directories of images, PDFs (one input per page), or manifests (*.txt: "
        "one path per line, # comments)",
    )
    parser.add_argument("--recursive", action="store_true", help="also read the folders inside the directories")
    parser.add_argument(
        "--ocr_type",
        default="ocr",
        metavar="{" + ",".join(OCR_TYPES) + "}",
        help="plain text (ocr) or formatted text: Markdown, LaTeX, tables (format)",
    )
    parser.add_argument("--box", help="read only this region: [x1,y1,x2,y2] in pixels of the image")
    parser.add_argument("--color", metavar="{" + ",".join(COLORS) + "}", help="read only the region framed in it")
    parser.add_argument("--multi_crop", action="store_true", help="cut large pages into tiles plus a global view")
    parser.add_argument("--max_crops", type=positive_int, default=MAX_CROPS, help="most tiles for --multi_crop")
    parser.add_argument("--multi_page", action="store_true", help="read all inputs (or PDF pages) as one document")
    parser.add_argument(
        "--max_new_tokens", type=positive_int, default=MAX_NEW_TOKENS, help="most tokens generated per input"
    )
    parser.add_argument(
        "--no_repeat_ngram_size",
        type=int,
        default=None,
        help="ban repeated n-grams (None: 20, off for multi-crop and multi-page)",
    )
    parser.add_argument(
        "--batch_size",
        type=positive_int,
        default=1,
        help="inputs read at once (continuous batching: each leaves when done, the next takes over)",
    )
    parser.add_argument(
        "--repetition_guard",
        action="store_true",
        help="end a text caught in a loop (GOT's failure on dense tables), keeping what came before",
    )
    add_device_arguments(parser)
    parser.add_argument(
        "--output",
        help="also write results: a .jsonl file, a directory (one .txt/.md per page) or one file (a .md or .html "
        "file holds every page of one PDF)",
    )
    parser.add_argument(
        "--render",
        choices=RENDERINGS,
        default="md",
        help="what an output directory gets: Markdown files for formatted text, or HTML pages with the image beside "
        "the text, rendered for formatted text and as read for plain (a single --output file follows its suffix)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep the results --output already holds and read only the rest"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="with --resume: read everything again if the earlier run used other options",
    )
    parser.add_argument(
        "--max_error_rate",
        type=share,
        default=None,
        help="stop once more than this share of all the inputs failed, every launched process's failures counted "
        "together, e.g. 0.01 (None: never stop)",
    )
    parser.add_argument("--stream", action="store_true", help="print the text as it is generated (one input)")
    parser.add_argument(
        "--query",
        help='replace the mode\'s query text, e.g. "OCR:" (the image block and chat '
        "template stay); a model fine-tuned here reads with its training query by default",
    )
    return parser.parse_args()


def main():
    args = parse_args()
    model_source(args.model_source)
    box = parse_box(args.box) if args.box is not None else None
    options = dict(
        ocr_type=args.ocr_type,
        box=box,
        color=args.color,
        multi_crop=args.multi_crop,
        max_crops=args.max_crops,
        multi_page=args.multi_page,
        query=args.query,
    )
    check_read_options(**options, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    shard = Shard.from_launcher()
    kept_run = args.output is not None and output_kind(args.output) != "file"
    if (shard.world > 1 or args.resume) and not kept_run:
        raise GOTError("A resumable or sharded run keeps its results in --output x.jsonl or a directory.")
    if args.overwrite and not args.resume:
        raise GOTError("--overwrite applies to --resume (a run without --resume always starts again).")
    inputs = expand_inputs(args.image_file, recursive=args.recursive)
    if box is not None:
        mark_box_misfits(inputs, box)
    bad = [inp for inp in inputs if inp.error is not None]
    if not kept_run:  # a kept run lists its failures as it reads, and in <output>.errors.jsonl
        for inp in bad:
            print(f"error: {inp.error}", file=sys.stderr)
        if len(bad) == len(inputs):
            sys.exit(EXIT_BAD_INPUT)
    readable = inputs if kept_run else [inp for inp in inputs if inp.error is None]
    documents = [readable] if args.multi_page else [[inp] for inp in readable]
    several_outputs = not args.multi_page and len(inputs) > 1
    if args.stream:
        check_stream(len(documents))
    if args.output:
        check_output(args.output, [document[0].name for document in documents])
    no_repeat_ngram_size = args.no_repeat_ngram_size
    if no_repeat_ngram_size is None:
        no_repeat_ngram_size = default_ngram_size(args.multi_crop, args.multi_page)
    read_options = dict(
        options,
        max_new_tokens=args.max_new_tokens,
        no_repeat_ngram_size=no_repeat_ngram_size,
        batch_size=args.batch_size,
        repetition_guard=args.repetition_guard,
    )
    store = None
    if kept_run:
        settings = text_settings(read_options, args.model_name_or_path, args.dtype)
        store = RunStore(
            args.output,
            documents_by_key(documents),
            args.ocr_type,
            settings,
            shard,
            args.resume,
            args.overwrite,
            args.render,
        )
        store.check_resume()
    barrier = join_launch(shard.world)

    ocr = None  # when every input is bad, a kept run records their reasons without the model
    if len(bad) < len(inputs):
        ocr = GOT.from_pretrained(
            args.model_name_or_path, dtype=args.dtype, num_threads=args.num_threads, source=args.model_source
        )

    if args.stream:

        def stream(text):
            sys.stdout.write(text)
            sys.stdout.flush()

        read_options["stream"] = stream

    def show(result):
        if result.error is None:
            print(json_line(result) if several_outputs else ("" if args.stream else result.text), flush=True)

    if store is not None:
        end = read_run(ocr, documents, store, read_options, args.max_error_rate, barrier, show)
        leave_launch()
        print(summary_line(end.total["total"] if end.total is not None else end.report), file=sys.stderr)
        if end.stopped is not None:
            print(f"error: {end.stopped}", file=sys.stderr)
        if shard.rank > 0:
            # Rank 0 alone exits 2 when an input failed, and the launcher then kills every process still running
            # (a SIGTERM in the middle of the interpreter's teardown): the other ranks end at once, all written.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        if end.total["total"]["failed"]:
            sys.exit(EXIT_BAD_INPUT)
        return

    results, failures = [], len(bad)
    progress = tqdm(total=len(documents), desc="Reading", unit="input", disable=len(documents) == 1)
    for result in ocr.iter_recognize([inp for doc in documents for inp in doc], **read_options):
        progress.update()
        results.append(result)
        if result.error is not None:
            progress.write(f"error: {result.error}", file=sys.stderr)
            failures += 1
        show(result)
    progress.close()
    if args.output:
        write_file(results, args.output, args.ocr_type)
    if failures:
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    run_cli(main)
