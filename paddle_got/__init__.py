"""paddle_got: GOT-OCR2.0 inference and post-training on PaddlePaddle."""

from . import _cpu_setup  # noqa: F401  (must run before paddle is imported)
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
