"""paddle_got: GOT-OCR2.0 inference and post-training on PaddlePaddle."""

import warnings

# Importing paddle warns about a missing C++ compiler cache that only matters for building custom ops.
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)

from .config import GOTConfig, GOTVisionConfig
from .errors import CheckpointError, GOTError
from .modeling.got import GOTCausalLMOutput, GOTQwenForCausalLM

__all__ = [
    "GOTConfig",
    "GOTVisionConfig",
    "GOTQwenForCausalLM",
    "GOTCausalLMOutput",
    "GOTError",
    "CheckpointError",
]
__version__ = "0.1.0"
