"""paddle_got: GOT-OCR2.0 inference and post-training on PaddlePaddle.

The public names are imported on first use, so that the parts that need no model (`paddle_got.render`,
`paddle_got.metrics`, `tools/render.py`) never import Paddle.
"""

import importlib

from .errors import CheckpointError, GOTError

_PUBLIC = {
    "GOT": ".pipeline",
    "OCRResult": ".pipeline",
    "GOTProcessor": ".processing",
    "OCRRequest": ".processing",
    "GOTTokenizer": ".tokenizer",
    "GOTConfig": ".config",
    "GOTVisionConfig": ".config",
    "GOTQwenForCausalLM": ".modeling.got",
    "GOTCausalLMOutput": ".modeling.got",
}

__all__ = [*_PUBLIC, "GOTError", "CheckpointError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """`paddle_got.GOT` and the other public names, imported from their module when first asked for."""
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name], __name__), name)
