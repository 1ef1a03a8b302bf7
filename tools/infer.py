"""Read images and PDFs with GOT-OCR2.0.

    python tools/infer.py --ocr_type format --image_file page.png
    python tools/infer.py --image_file scans/ --batch_size 4 --output results.jsonl
    python tools/infer.py --image_file slide.png --color red
    python tools/infer.py --image_file report.pdf --multi_page --ocr_type format

One input: stdout holds exactly the recognised text and a newline. Several inputs: one JSON object per line,
{"image": ..., "text": ...} (PDF pages add "page"), in input order. Logs and progress go to stderr. A bad input is
reported on stderr in one line and skipped; the exit code is then 2.
"""

import sys

from tqdm import tqdm

from paddle_got.cli import EXIT_BAD_INPUT, ArgumentParser, positive_int, run_cli
from paddle_got.constants import COLORS, DTYPES, MAX_CROPS, MAX_NEW_TOKENS, OCR_TYPES
from paddle_got.outputs import check_output, json_line, write_results
from paddle_got.hub import DEFAULT_MODEL, MODEL_SOURCES, model_source
from paddle_got.pipeline import (
    GOT,
    check_read_options,
    check_stream,
    expand_inputs,
    mark_box_misfits,
)
from paddle_got.processing import parse_box


def parse_args():
    parser = ArgumentParser(__doc__)
    parser.add_argument("--model_name_or_path", default=DEFAULT_MODEL,
                        help="checkpoint directory (any layout) or hub id")
    parser.add_argument("--model_source", metavar="{" + ",".join(MODEL_SOURCES) + "}",
                        help="where a hub id is fetched from (default: $PADDLE_GOT_MODEL_SOURCE, else huggingface)")
    parser.add_argument("--image_file", nargs="+", required=True,
                        help="image files, directories of images, or PDFs (one input per page)")
    parser.add_argument("--ocr_type", default="ocr", metavar="{" + ",".join(OCR_TYPES) + "}",
                        help="plain text (ocr) or formatted text: Markdown, LaTeX, tables (format)")
    parser.add_argument("--box", help="read only this region: [x1,y1,x2,y2] in pixels of the image")
    parser.add_argument("--color", metavar="{" + ",".join(COLORS) + "}", help="read only the region framed in it")
    parser.add_argument("--multi_crop", action="store_true", help="cut large pages into tiles plus a global view")
    parser.add_argument("--max_crops", type=positive_int, default=MAX_CROPS, help="most tiles for --multi_crop")
    parser.add_argument("--multi_page", action="store_true", help="read all inputs (or PDF pages) as one document")
    parser.add_argument("--max_new_tokens", type=positive_int, default=MAX_NEW_TOKENS,
                        help="most tokens generated per input")
    parser.add_argument("--no_repeat_ngram_size", type=int, default=None,
                        help="ban repeated n-grams (None: 20, off for multi-crop and multi-page)")
    parser.add_argument("--batch_size", type=positive_int, default=1,
                        help="inputs read at once (continuous batching: each leaves when done, the next takes over)")
    parser.add_argument("--repetition_guard", action="store_true",
                        help="end a text caught in a loop (GOT's failure on dense tables), keeping what came before")
    parser.add_argument("--dtype", default="auto", metavar="{" + ",".join(("auto",) + DTYPES) + "}",
                        help="auto: bfloat16/float16 on GPU, float32 on CPU")
    parser.add_argument("--num_threads", type=positive_int, default=None, help="CPU threads (None: all cores)")
    parser.add_argument("--output", help="also write results: a .jsonl file, a directory (one .txt/.md each) or a file")
    parser.add_argument("--stream", action="store_true", help="print the text as it is generated (one input)")
    parser.add_argument("--query", help="replace the mode's query text, e.g. \"OCR:\" (the image block and chat "
                        "template stay); a model fine-tuned here reads with its training query by default")
    return parser.parse_args()


def main():
    args = parse_args()
    model_source(args.model_source)
    box = parse_box(args.box) if args.box is not None else None
    options = dict(ocr_type=args.ocr_type, box=box, color=args.color, multi_crop=args.multi_crop,
                   max_crops=args.max_crops, multi_page=args.multi_page, query=args.query)
    check_read_options(**options, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    inputs = expand_inputs(args.image_file)
    if box is not None:
        mark_box_misfits(inputs, box)
    failures = 0
    for inp in inputs:
        if inp.error is not None:
            print(f"error: {inp.error}", file=sys.stderr)
            failures += 1
    if failures == len(inputs):
        sys.exit(EXIT_BAD_INPUT)
    readable = [inp for inp in inputs if inp.error is None]
    num_documents = 1 if args.multi_page else len(readable)
    several_outputs = not args.multi_page and len(inputs) > 1
    if args.stream:
        check_stream(num_documents)
    if args.output:
        check_output(args.output, 1 if args.multi_page else len(inputs))

    ocr = GOT.from_pretrained(args.model_name_or_path, dtype=args.dtype, num_threads=args.num_threads,
                              source=args.model_source)
    stream = None
    if args.stream:
        def stream(text):
            sys.stdout.write(text)
            sys.stdout.flush()

    results = []
    progress = tqdm(total=num_documents, desc="Reading", unit="input", disable=num_documents == 1)
    for result in ocr.iter_recognize(readable, max_new_tokens=args.max_new_tokens,
                                     no_repeat_ngram_size=args.no_repeat_ngram_size, batch_size=args.batch_size,
                                     stream=stream, repetition_guard=args.repetition_guard, **options):
        progress.update()
        results.append(result)
        if result.error is not None:
            progress.write(f"error: {result.error}", file=sys.stderr)
            failures += 1
        elif several_outputs:
            print(json_line(result), flush=True)
        else:
            print("" if args.stream else result.text, flush=True)
    progress.close()
    if args.output:
        write_results(results, args.output, args.ocr_type)
    if failures:
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    run_cli(main)
