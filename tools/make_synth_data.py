"""Render a small SynthDoG-like dataset offline (words, lines, paragraphs on varied backgrounds).

    python tools/make_synth_data.py --out data/synth_train --num_samples 2000 --seed 0
    python tools/make_synth_data.py --out data/synth_heldout --num_samples 100 --seed 1 --kinds word

Writes OUT/images/, OUT/annotations.json and OUT/meta.json (the training format; pass --meta_path OUT/meta.json).
"""

from paddle_got.process import tune_process

tune_process()  # before Paddle loads (paddle_got/process.py)

from paddle_got.cli import ArgumentParser, run_cli
from paddle_got.data.synth import KINDS, write_dataset
from paddle_got.errors import GOTError
from paddle_got.logger import logger


def parse_args():
    parser = ArgumentParser(__doc__)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="different seeds give different images")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), help=f"any of {', '.join(KINDS)}")
    return parser.parse_args()


def main():
    args = parse_args()
    unknown = sorted(set(args.kinds) - set(KINDS))
    if unknown:
        raise GOTError(f"Unknown kind {unknown[0]!r}: choose from {', '.join(KINDS)}.")
    if args.num_samples < 1:
        raise GOTError("--num_samples must be at least 1.")
    meta_path = write_dataset(args.out, args.num_samples, args.seed, tuple(args.kinds))
    logger.info(f"Wrote {args.num_samples} samples; train with --meta_path {meta_path}")


if __name__ == "__main__":
    run_cli(main)
