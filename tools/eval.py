"""Score OCR with the GOT paper's metrics (and PaddleOCR's acc / norm_edit_dis).

    python tools/eval.py --predictions results.jsonl --references data/test/annotations.json --report report.json
    python tools/eval.py --model_name_or_path output/got_stage2 --meta_path data/test/meta.json --level word

Prints a table of averages on stdout; --report writes every average and every sample's scores as JSON.
"""

import argparse

from paddle_got.cli import run_cli
from paddle_got.constants import MAX_NEW_TOKENS
from paddle_got.errors import GOTError
from paddle_got.evaluation import evaluate_model, evaluate_predictions, format_table, write_report


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", help="predictions JSONL written by tools/infer.py")
    parser.add_argument("--references", help="annotations (training format, .json or .jsonl) to score against")
    parser.add_argument("--model_name_or_path", help="read the images of --meta_path with this model")
    parser.add_argument("--meta_path", help="annotated dataset (training format) to read and score")
    parser.add_argument("--level", default="word", choices=("word", "char"),
                        help="tokens for F1/BLEU/METEOR: words (documents) or characters (scene text)")
    parser.add_argument("--ocr_type", default="ocr", help="ocr or format (with --model_name_or_path)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=MAX_NEW_TOKENS)
    parser.add_argument("--report", help="write the JSON report here")
    return parser.parse_args()


def main():
    args = parse_args()
    if args.predictions and args.references:
        report = evaluate_predictions(args.predictions, args.references, args.level)
    elif args.model_name_or_path and args.meta_path:
        from paddle_got.pipeline import GOT

        reader = GOT.from_pretrained(args.model_name_or_path)
        report = evaluate_model(reader, args.meta_path, args.level, ocr_type=args.ocr_type,
                                batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    else:
        raise GOTError("Give --predictions with --references, or --model_name_or_path with --meta_path.")
    if args.report:
        write_report(report, args.report)
    print(format_table(report))


if __name__ == "__main__":
    run_cli(main)
