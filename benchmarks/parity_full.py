"""Parity at the full released GOT-OCR2.0 configuration, with random weights (not a CI test: ~6 GB, a minute).

    python benchmarks/parity_full.py [--threads N] [--seed S]

Builds `GotOcr2ForConditionalGeneration` (transformers 4.51.3, torch CPU, float32) at the released sizes with
every parameter random, saves it in the Hugging Face layout, loads it with `GOTQwenForCausalLM.from_pretrained`,
and compares logits on a one-tile 1024x1024 prompt and a text-only prompt. Prints the relative errors on stdout.
"""

import argparse
import sys
import tempfile
import time

import numpy as np
import paddle
import torch
from transformers import GotOcr2Config, GotOcr2ForConditionalGeneration

from paddle_got import GOTConfig, GOTQwenForCausalLM
from paddle_got.device import set_cpu_threads

WEIGHT_STD = 0.02
ORDINARY_TOKEN_RANGE = 100_000  # ids well below the special tokens


def build_reference(seed: int) -> GotOcr2ForConditionalGeneration:
    """The released architecture with every parameter random (norms near 1, positional tables non-zero)."""
    torch.manual_seed(seed)
    model = GotOcr2ForConditionalGeneration(GotOcr2Config()).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn_like(parameter)
            is_norm_scale = name.endswith("weight") and parameter.ndim == 1
            parameter.copy_(1.0 + WEIGHT_STD * noise if is_norm_scale else WEIGHT_STD * noise)
    return model


def released_prompt(config: GOTConfig, rng: np.random.Generator, num_tiles: int) -> np.ndarray:
    """`[1, L]` ids shaped like a real GOT prompt: text, `<img>`, 256 pads per tile, `</img>`, text."""

    def text_ids(count):
        return rng.integers(0, ORDINARY_TOKEN_RANGE, count).tolist()

    image = []
    if num_tiles:
        pads = [config.im_patch_token] * (num_tiles * config.image_tokens_per_tile)
        image = [config.im_start_token] + pads + [config.im_end_token]
    return np.array([text_ids(20) + image + text_ids(12)], dtype="int64")


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both frameworks (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    threads = set_cpu_threads(args.threads)
    torch.set_num_threads(threads)

    start = time.time()
    reference = build_reference(args.seed)
    rng = np.random.default_rng(args.seed)
    pixels = rng.standard_normal((1, 3, 1024, 1024)).astype("float32")
    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory, safe_serialization=True)
        print(f"built and saved the reference in {time.time() - start:.0f}s", file=sys.stderr)
        ours = GOTQwenForCausalLM.from_pretrained(directory)

    for label, num_tiles in (("one 1024x1024 tile", 1), ("text only", 0)):
        ids = released_prompt(ours.config, rng, num_tiles)
        inputs = {"input_ids": torch.from_numpy(ids)}
        if num_tiles:
            inputs["pixel_values"] = torch.from_numpy(pixels)
        with torch.no_grad():
            expected = reference(**inputs).logits.numpy()
        with paddle.no_grad():
            logits = ours(
                paddle.to_tensor(ids), pixel_values=paddle.to_tensor(pixels) if num_tiles else None
            ).logits.numpy()
        same_tokens = float((logits.argmax(-1) == expected.argmax(-1)).mean())
        print(
            f"{label}: {ids.shape[1]} tokens, logits relative error {relative_error(logits, expected):.2e}, "
            f"greedy tokens equal at {same_tokens:.1%} of positions"
        )


if __name__ == "__main__":
    main()
