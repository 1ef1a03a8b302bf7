"""paddle_got: GOT-OCR2.0 inference and post-training on PaddlePaddle."""

import warnings

# Importing paddle warns about a missing C++ compiler cache that only matters for building custom ops.
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
# paddlenlp's import chain triggers this setuptools notice; it says nothing about our code.
warnings.filterwarnings("ignore", message="Setuptools is replacing distutils", category=UserWarning)

from .config import GOTConfig, GOTVisionConfig
from .errors import CheckpointError, GOTError
from .modeling.got import GOTCausalLMOutput, GOTQwenForCausalLM
from .pipeline import GOT, OCRResult
from .processing import GOTProcessor, OCRRequest
from .tokenizer import GOTTokenizer

__all__ = [
    "GOT",
    "OCRResult",
    "GOTProcessor",
    "OCRRequest",
    "GOTTokenizer",
    "GOTConfig",
    "GOTVisionConfig",
    "GOTQwenForCausalLM",
    "GOTCausalLMOutput",
    "GOTError",
    "CheckpointError",
]
__version__ = "0.1.0"
