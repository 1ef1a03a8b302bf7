"""Write configs/tiny_got/qwen.tiktoken: a small byte-level BPE vocabulary for training tiny GOTs from scratch.

    python examples/make_tiny_tokenizer.py [--out configs/tiny_got/qwen.tiktoken] [--merges 100]

The 256 bytes, then merges learned from GOT's conversation template, so the fixed prompt costs a few tokens
instead of ~90 bytes while answers stay close to characters: a tiny model still has to read letter by letter.
The GOT special tokens follow the ranks when the tokenizer loads (paddle_got.tokenizer).
"""

import argparse
import os
import sys

from paddle_got.constants import FORMAT_OCR, PLAIN_OCR, SYSTEM_MESSAGE
from paddle_got.tokenizer import train_byte_bpe, write_tiktoken_ranks

TEMPLATE_TEXT = " ".join(["system\n" + SYSTEM_MESSAGE, "user\n", "assistant\n", "\n" + PLAIN_OCR, FORMAT_OCR, "\nOCR:"])
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny_got",
                           "qwen.tiktoken")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--merges", type=int, default=100)
    args = parser.parse_args()
    ranks = train_byte_bpe(TEMPLATE_TEXT, args.merges)
    write_tiktoken_ranks(args.out, ranks)
    print(f"{len(ranks)} ranks written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
