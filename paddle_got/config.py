"""GOTConfig: the architecture of a GOT model, read from any of the three config.json layouts.

The defaults are the released GOT-OCR2.0 values (docs/design.md §1). Layouts understood by `from_dict`:
- ours / PaddleMIX / the original PyTorch GOT: flat Qwen2 fields plus `im_patch_token` and an optional
  `vision_config` (Hugging Face field names); without it the released ViT-B/1024 encoder applies;
- Hugging Face `got_ocr2`: `text_config`, `vision_config` and `image_token_index`.
"""

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List

from .errors import CheckpointError, reason

CONFIG_NAME = "config.json"


@dataclass
class GOTVisionConfig:
    """The SAM/ViTDet encoder (`vision_tower_high`) and its two stride-2 convolutions (`net_2`, `net_3`)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    global_attn_indexes: List[int] = field(default_factory=lambda: [2, 5, 8, 11])
    output_channels: int = 256
    mlp_dim: int = 3072
    layer_norm_eps: float = 1e-6

    @property
    def grid_size(self) -> int:
        """Side of the patch grid (64 for 1024 / 16)."""
        return self.image_size // self.patch_size

    @property
    def tokens_per_tile(self) -> int:
        """Image tokens one tile becomes: the grid after two 3x3 stride-2 pad-1 convs, squared (256 released)."""
        side = self.grid_size
        for _ in range(2):
            side = (side - 1) // 2 + 1
        return side * side

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "GOTVisionConfig":
        """Build from a dict, ignoring keys that are not architecture fields (HF adds many)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class GOTConfig:
    """The whole model: Qwen2 decoder fields (flat, as in the original GOT config) + `vision_config`."""

    vocab_size: int = 151860
    hidden_size: int = 1024
    intermediate_size: int = 2816
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True
    im_patch_token: int = 151859
    im_start_token: int = 151857
    im_end_token: int = 151858
    vision_config: GOTVisionConfig = field(default_factory=GOTVisionConfig)

    def __post_init__(self):
        if isinstance(self.vision_config, dict):
            self.vision_config = GOTVisionConfig.from_dict(self.vision_config)
        if self.hidden_size % self.num_attention_heads:
            raise CheckpointError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}."
            )

    @property
    def head_dim(self) -> int:
        """Width of one decoder attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def image_tokens_per_tile(self) -> int:
        """How many `<imgpad>` slots one image tile fills."""
        return self.vision_config.tokens_per_tile

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "GOTConfig":
        """Build from any supported config.json content (see the module docstring)."""
        if values.get("model_type") == "got_ocr2":
            flat = dict(values.get("text_config") or {})
            flat["im_patch_token"] = values.get("image_token_index", cls.im_patch_token)
            flat["vision_config"] = values.get("vision_config") or {}
        else:
            flat = dict(values)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in flat.items() if k in known and v is not None})

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict in our layout (flat GOT fields + `vision_config`)."""
        values = dataclasses.asdict(self)
        return {"model_type": "GOT", "architectures": ["GOTQwenForCausalLM"], **values}

    @classmethod
    def from_pretrained(cls, path: str) -> "GOTConfig":
        """Read `path/config.json` (or `path` itself if it is a file)."""
        config_file = os.path.join(path, CONFIG_NAME) if os.path.isdir(path) else path
        if not os.path.isfile(config_file):
            raise CheckpointError(f"No {CONFIG_NAME} found in {path}: a checkpoint directory needs one.")
        try:
            with open(config_file, encoding="utf-8") as f:
                values = json.load(f)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"Cannot read {config_file}: {reason(err)}.") from err
        if not isinstance(values, dict):
            raise CheckpointError(f"{config_file} does not hold a JSON object.")
        return cls.from_dict(values)

    def save_pretrained(self, directory: str) -> None:
        """Write `directory/config.json` in our layout."""
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
