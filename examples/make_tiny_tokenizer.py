"""Write configs/tiny_got/qwen.tiktoken: a small byte-level BPE vocabulary for training tiny GOTs from scratch.

    python examples/make_tiny_tokenizer.py [--out configs/tiny_got/qwen.tiktoken] [--merges 100]

The 256 bytes, then merges learned from GOT's conversation template, so the fixed prompt costs a few tokens
instead of ~90 bytes while answers stay close to characters: a tiny model still has to read letter by letter.
The GOT special tokens follow the ranks when the tokenizer loads (paddle_got.tokenizer).
"""

import argparse
import os
import re
import sys
from collections import Counter
from typing import Dict, List

from paddle_got.constants import FORMAT_OCR, PLAIN_OCR, SYSTEM_MESSAGE
from paddle_got.tokenizer import write_tiktoken_ranks

TEMPLATE_TEXT = " ".join(["system\n" + SYSTEM_MESSAGE, "user\n", "assistant\n", "\n" + PLAIN_OCR, FORMAT_OCR, "\nOCR:"])
DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny_got", "qwen.tiktoken"
)


def train_byte_bpe(text: str, num_merges: int) -> Dict[bytes, int]:
    """A small byte-level BPE vocabulary for tiny experiments and the tests: ranks 0-255 are the bytes, then up to
    `num_merges` merges of the most frequent adjacent pairs within the words of `text`."""
    ranks = {bytes([value]): value for value in range(256)}
    words = [[bytes([b]) for b in piece.encode()] for piece in re.findall(r" ?\w+| ?[^\w\s]+|\s+", text)]
    for _ in range(num_merges):
        pairs = Counter(pair for word in words for pair in zip(word, word[1:]))
        if not pairs:
            break
        (first, second), _ = pairs.most_common(1)[0]
        ranks[first + second] = len(ranks)
        words = [_merge_pair(word, first, second) for word in words]
    return ranks


def _merge_pair(word: List[bytes], first: bytes, second: bytes) -> List[bytes]:
    merged, index = [], 0
    while index < len(word):
        if index + 1 < len(word) and (word[index], word[index + 1]) == (first, second):
            merged.append(first + second)
            index += 2
        else:
            merged.append(word[index])
            index += 1
    return merged


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
