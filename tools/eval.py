"""Score OCR with the GOT paper's metrics (and PaddleOCR's acc / norm_edit_dis).

    python tools/eval.py --predictions results.jsonl --references data/test/annotations.json --report report.json
    python tools/eval.py --model_name_or_path output/got_stage2 --meta_path data/test/meta.json --level word

Prints a table of averages on stdout; --report writes every average and every sample's scores as JSON.
"""

from paddle_got.process import tune_process

tune_process()  # before Paddle loads (paddle_got/process.py)

from paddle_got.cli import ArgumentParser, add_model_arguments, positive_int, run_cli
from paddle_got.constants import MAX_NEW_TOKENS, OCR_TYPES
from paddle_got.errors import GOTError
from paddle_got.evaluation import evaluate_model, evaluate_predictions, format_table, write_report
from paddle_got.hub import model_source
from paddle_got.outputs import check_output


def parse_args():
    parser = ArgumentParser(__doc__)
    parser.add_argument("--predictions", help="predictions JSONL written by tools/infer.py")
    parser.add_argument("--references", help="annotations (training format, .json or .jsonl) to score against")
    add_model_arguments(parser, "read the images of --meta_path with this model", default=None)
    parser.add_argument("--meta_path", help="annotated dataset (training format) to read and score")
    parser.add_argument(
        "--level",
        default="word",
        choices=("word", "char"),
        help="tokens for F1/BLEU/METEOR: words (documents) or characters (scene text)",
    )
    parser.add_argument(
        "--ocr_type",
        default="ocr",
        metavar="{" + ",".join(OCR_TYPES) + "}",
        help="plain or formatted text (with --model_name_or_path)",
    )
    parser.add_argument(
        "--query",
        help="replace the mode's query text (default: the model's training query, "
        "if it was fine-tuned here, else the reference's)",
    )
    parser.add_argument("--batch_size", type=positive_int, default=4, help="images read at once")
    parser.add_argument(
        "--max_new_tokens", type=positive_int, default=MAX_NEW_TOKENS, help="most tokens generated per image"
    )
    parser.add_argument("--report", help="write the JSON report here")
    return parser.parse_args()


def main():
    args = parse_args()
    if args.report:
        check_output(args.report, 1)
    if args.predictions and args.references:
        report = evaluate_predictions(args.predictions, args.references, args.level)
    elif args.model_name_or_path and args.meta_path:
        from paddle_got.data.annotations import load_meta
        from paddle_got.pipeline import GOT, check_read_options

        options = dict(
            ocr_type=args.ocr_type, query=args.query, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens
        )
        check_read_options(**options)
        source = model_source(args.model_source)
        records = load_meta(args.meta_path)
        reader = GOT.from_pretrained(args.model_name_or_path, source=source)
        report = evaluate_model(reader, records, args.level, **options)
    else:
        raise GOTError("Give --predictions with --references, or --model_name_or_path with --meta_path.")
    if args.report:
        write_report(report, args.report)
    print(format_table(report))


if __name__ == "__main__":
    run_cli(main)
