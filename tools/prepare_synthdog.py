"""Convert the original SynthDoG-EN release (Donut's parquet shards) into paddle_got's training format.

    python tools/prepare_synthdog.py --src synthdog-en/data --out data/synthdog_en

Writes OUT/images/, OUT/synthdog_en.json and OUT/meta.json with the question "<image>\\nOCR:" (as PaddleMIX's
modified SynthDoG-EN has it); configs/stage2.yaml reads data/synthdog_en/meta.json.
"""

from paddle_got.process import tune_process

tune_process()  # before Paddle loads (paddle_got/process.py)

from paddle_got.cli import ArgumentParser, run_cli
from paddle_got.data.synthdog import convert_synthdog
from paddle_got.logger import logger


def parse_args():
    parser = ArgumentParser(__doc__)
    parser.add_argument("--src", required=True, help="a parquet file or a directory of parquet shards")
    parser.add_argument("--out", required=True, help="output directory")
    return parser.parse_args()


def main():
    args = parse_args()
    meta_path, kept, skipped = convert_synthdog(args.src, args.out)
    logger.info(f"Wrote {kept} samples ({skipped} unreadable rows skipped); train with --meta_path {meta_path}")


if __name__ == "__main__":
    run_cli(main)
