"""Checkpoint conversion: any supported layout in, paddle_got's own (config.json + model.safetensors) out."""

import os

from .checkpoint import save_pretrained
from .errors import CheckpointError
from .modeling.got import GOTQwenForCausalLM


def convert_checkpoint(source: str, destination: str, dtype: str = "float32", overwrite: bool = False) -> None:
    """Load `source` (any layout, logged) and write it to `destination` in ours, tokenizer files included.

    Nothing is written if loading fails; an existing, non-empty `destination` is refused unless `overwrite`.
    """
    if os.path.abspath(source) == os.path.abspath(destination):
        raise CheckpointError("--src and --dst must be different directories.")
    if os.path.exists(destination) and not overwrite and (not os.path.isdir(destination) or os.listdir(destination)):
        raise CheckpointError(
            f"{destination} already exists and is not empty: give another --dst, or --overwrite "
            "to replace the files it shares with the conversion."
        )
    model = GOTQwenForCausalLM.from_pretrained(source, dtype=dtype)
    save_pretrained(model, destination)
