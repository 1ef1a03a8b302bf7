"""Convert a GOT checkpoint in any layout (original PyTorch, Hugging Face, PaddleMIX) to paddle_got's own.

    python tools/convert_weights.py --src /path/to/GOT-OCR2_0 --dst ./GOT-OCR2_0-paddle [--dtype float32]

Tokenizer files are copied along. Nothing is written to --dst unless the conversion succeeds; a --dst that already
holds files is refused unless --overwrite.
"""

from paddle_got.process import tune_process

tune_process()  # before Paddle loads (paddle_got/process.py)

from paddle_got.cli import ArgumentParser, run_cli
from paddle_got.constants import DTYPES
from paddle_got.conversion import convert_checkpoint
from paddle_got.device import set_cpu_threads
from paddle_got.logger import logger


def parse_args():
    parser = ArgumentParser(__doc__)
    parser.add_argument("--src", required=True, help="checkpoint directory in any supported layout")
    parser.add_argument("--dst", required=True, help="output directory (our layout)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype of the saved weights")
    parser.add_argument("--overwrite", action="store_true", help="write into a --dst that already holds files")
    return parser.parse_args()


def main():
    args = parse_args()
    set_cpu_threads()
    convert_checkpoint(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite)
    logger.info(f"Wrote {args.dst} (paddle layout, safetensors, {args.dtype}).")


if __name__ == "__main__":
    run_cli(main)
