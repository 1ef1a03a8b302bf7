"""Checkpoint I/O: find weight files, detect the layout, map names, transpose Linear weights, report clearly.

Layouts (docs/design.md §6), detected from the parameter names:
- `paddle`: ours and PaddleMIX's (`qwen2.*`, `lm_head.weight`), Paddle Linear layout `[in, out]`;
- `got`: the original PyTorch GOT release (`model.*`, `model.vision_tower_high.*`, `lm_head.weight`);
- `hf`: Hugging Face `got_ocr2` (`vision_tower.*`, `multi_modal_projector.*`, `language_model.*`).
PyTorch Linear weights are `[out, in]`: every 2-D `*.weight` except the token embedding is transposed.
"""

import json
import os
import re
import shutil
import tempfile
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import paddle
from safetensors import safe_open
from safetensors.paddle import save_file
from tqdm import tqdm

from .config import GOTConfig
from .constants import DTYPES, SAFETENSORS_NAME, TOKENIZER_FILES, WEIGHT_FILES
from .errors import CheckpointError, reason
from .logger import logger
from .outputs import make_readable_as_umask_allows

EMBEDDING_NAME = "qwen2.embed_tokens.weight"
LM_HEAD_NAME = "lm_head.weight"
# Buffers some exports carry that our model recomputes.
IGNORED_NAME_PATTERN = re.compile(r"rotary_emb\.inv_freq$")
LISTED_NAMES = 5
# The safetensors header's dtype names -> ours.
SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64", "I64": "int64"}

# Hugging Face -> ours, applied in order to names that start with the key.
_HF_PREFIXES = (
    ("language_model.model.", "qwen2."),
    ("language_model.lm_head.", "lm_head."),
    ("vision_tower.patch_embed.projection.", "qwen2.vision_tower_high.patch_embed.proj."),
    ("vision_tower.pos_embed", "qwen2.vision_tower_high.pos_embed"),
    ("vision_tower.layers.", "qwen2.vision_tower_high.blocks."),
    ("vision_tower.neck.conv1.", "qwen2.vision_tower_high.neck.0."),
    ("vision_tower.neck.layer_norm1.", "qwen2.vision_tower_high.neck.1."),
    ("vision_tower.neck.conv2.", "qwen2.vision_tower_high.neck.2."),
    ("vision_tower.neck.layer_norm2.", "qwen2.vision_tower_high.neck.3."),
    ("multi_modal_projector.conv_upsampler1.", "qwen2.vision_tower_high.net_2."),
    ("multi_modal_projector.conv_upsampler2.", "qwen2.vision_tower_high.net_3."),
    ("multi_modal_projector.multimodal_projector.", "qwen2.mm_projector_vary."),
)
_HF_BLOCK_NORMS = re.compile(r"(\.blocks\.\d+\.)layer_norm([12])\.")


def _hf_name(name: str) -> str:
    for source, target in _HF_PREFIXES:
        if name.startswith(source):
            name = target + name[len(source) :]
            break
    return _HF_BLOCK_NORMS.sub(r"\1norm\2.", name)


def _got_name(name: str) -> str:
    return "qwen2." + name[len("model.") :] if name.startswith("model.") else name


def detect_layout(names: List[str]) -> str:
    """Return "paddle", "got" or "hf" from a checkpoint's parameter names; CheckpointError if none fits."""
    if any(n.startswith("qwen2.") for n in names):
        return "paddle"
    if any(n.startswith(("language_model.", "vision_tower.", "multi_modal_projector.")) for n in names):
        return "hf"
    if any(n.startswith("model.") for n in names):
        return "got"
    shown = ", ".join(sorted(names)[:LISTED_NAMES]) or "no parameters"
    raise CheckpointError(
        f"Unknown checkpoint layout: expected names starting with qwen2., model. or language_model./vision_tower., "
        f"found {shown}."
    )


def needs_transpose(our_name: str, layout: str) -> bool:
    """True for PyTorch Linear weights (2-D `*.weight` other than the token embedding)."""
    return layout != "paddle" and our_name.endswith(".weight") and our_name != EMBEDDING_NAME


class WeightSource:
    """Lazy access to a checkpoint's tensors (as paddle tensors), whatever the file format."""

    def __init__(self, directory: str):
        self.directory = directory
        self.fmt, self.files = self._find_files(directory)
        self._cache: Dict[str, paddle.Tensor] = {}
        self._where: Dict[str, str] = {}
        if self.fmt == "safetensors":
            for file in self.files:
                with self._open_safetensors(file) as handle:
                    for name in handle.keys():
                        self._where[name] = file
        else:
            for file in self.files:
                for name, tensor in self._load_whole(file).items():
                    self._cache[name] = tensor
                    self._where[name] = file

    @staticmethod
    def _find_files(directory: str) -> Tuple[str, List[str]]:
        if not os.path.isdir(directory):
            raise CheckpointError(f"Checkpoint directory {directory} does not exist.")
        for file_name, fmt in WEIGHT_FILES:
            path = os.path.join(directory, file_name)
            if not os.path.isfile(path):
                continue
            if file_name.endswith(".index.json"):
                try:
                    with open(path, encoding="utf-8") as f:
                        shards = sorted(set(json.load(f)["weight_map"].values()))
                except (OSError, ValueError, KeyError, AttributeError) as err:
                    raise CheckpointError(f"Cannot read the shard index {path}: {reason(err)}.") from err
                missing = [s for s in shards if not os.path.isfile(os.path.join(directory, s))]
                if missing:
                    raise CheckpointError(f"Shard {missing[0]} listed in {path} is missing.")
                return fmt, [os.path.join(directory, s) for s in shards]
            return fmt, [path]
        expected = ", ".join(name for name, _ in WEIGHT_FILES)
        raise CheckpointError(f"No weights found in {directory}: expected one of {expected}.")

    @staticmethod
    def _open_safetensors(file: str):
        try:
            return safe_open(file, framework="paddle")
        except Exception as err:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"Cannot read {file}: {reason(err)}.") from err

    @staticmethod
    def _load_whole(file: str) -> Dict[str, paddle.Tensor]:
        if file.endswith(".pdparams"):
            try:
                return dict(paddle.load(file))
            except Exception as err:
                raise CheckpointError(f"Cannot read {file}: {reason(err)}.") from err
        try:
            import torch
        except ImportError:
            raise CheckpointError(
                f"{file} is a PyTorch file: install torch to read it, or convert it to safetensors."
            ) from None
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"Cannot read {file}: {reason(err)}.") from err
        converted = {}
        for name, tensor in state.items():
            dtype = str(tensor.dtype).replace("torch.", "")
            converted[name] = paddle.to_tensor(tensor.float().numpy()).astype(dtype)
        return converted

    def names(self) -> List[str]:
        """Every parameter name in the checkpoint."""
        return list(self._where)

    def dtype(self, name: str) -> str:
        """One tensor's dtype ("float32", "bfloat16", ...): from the safetensors header, or the loaded tensor."""
        if name in self._cache:
            return str(self._cache[name].dtype).replace("paddle.", "")
        with self._open_safetensors(self._where[name]) as handle:
            return SAFETENSORS_DTYPES[handle.get_slice(name).get_dtype()]

    def get(self, name: str) -> paddle.Tensor:
        """One tensor, read from disk on demand."""
        if name in self._cache:
            return self._cache[name]
        with self._open_safetensors(self._where[name]) as handle:
            return handle.get_tensor(name)


def _list(names) -> str:
    names = sorted(names)
    shown = ", ".join(names[:LISTED_NAMES])
    return shown + (f" and {len(names) - LISTED_NAMES} more" if len(names) > LISTED_NAMES else "")


def _tensors_equal(first: paddle.Tensor, second: paddle.Tensor) -> bool:
    return first.shape == second.shape and bool((first == second).all())


def check_dtype(dtype: str) -> None:
    """CheckpointError unless `dtype` is one we load weights in."""
    if dtype not in DTYPES:
        raise CheckpointError(f"Unsupported dtype {dtype!r}: choose one of {', '.join(DTYPES)}.")


class CheckpointWeights:
    """A checkpoint directory in any layout, read as our model's parameters: its config (with
    `tie_word_embeddings` decided from the weights) and each tensor under our name, in Paddle's layout."""

    def __init__(self, path: str):
        self.path = path
        self.config = GOTConfig.from_pretrained(path)
        self.source = WeightSource(path)
        self.layout = detect_layout(self.source.names())
        rename: Callable[[str], str] = {"paddle": lambda n: n, "got": _got_name, "hf": _hf_name}[self.layout]
        self.stored_names = {
            rename(name): name for name in self.source.names() if not IGNORED_NAME_PATTERN.search(name)
        }

        # The original release stores lm_head although its config says tied: tie only when it equals the embedding.
        tied = LM_HEAD_NAME not in self.stored_names
        if not tied and EMBEDDING_NAME in self.stored_names:
            head = self.source.get(self.stored_names[LM_HEAD_NAME])
            embedding = self.source.get(self.stored_names[EMBEDDING_NAME])
            tied = _tensors_equal(head.T if self.layout == "paddle" else head, embedding)
            if tied:
                del self.stored_names[LM_HEAD_NAME]
            else:
                logger.info("lm_head.weight differs from the token embedding: keeping it as an untied output head.")
        self.config.tie_word_embeddings = tied

    def stored_dtype(self, our_name: str) -> str:
        """The dtype our parameter `our_name` is stored in (e.g. "bfloat16"), read without loading the tensor."""
        return self.source.dtype(self.stored_names[our_name])

    def tensor(self, our_name: str) -> paddle.Tensor:
        """The stored tensor for our parameter `our_name`, Linear weights as `[in, out]`, in its stored dtype."""
        tensor = self.source.get(self.stored_names[our_name])
        if needs_transpose(our_name, self.layout) and tensor.ndim == 2:
            # A transposed view would stay strided inside the parameter, and every matmul would then copy it.
            tensor = tensor.T.contiguous()
        return tensor

    def load_into(self, model, dtype: str) -> None:
        """Fill `model` (built from `self.config`, e.g. under `paddle.LazyGuard`) with these weights, cast it to
        `dtype` (one of `DTYPES`) and put it in eval mode; it records `stored_dtype` and the directory's
        `tokenizer_files`."""
        parameters = model.state_dict()
        missing = set(parameters) - set(self.stored_names)
        unexpected = set(self.stored_names) - set(parameters)
        if missing:
            raise CheckpointError(f"The checkpoint in {self.path} lacks parameters the model needs: {_list(missing)}.")
        if unexpected:
            raise CheckpointError(
                f"The checkpoint in {self.path} has parameters the model does not know: {_list(unexpected)}."
            )

        stored_dtypes = set()
        for our_name, parameter in tqdm(parameters.items(), desc="Loading weights", unit="tensor", leave=False):
            tensor = self.tensor(our_name)
            stored_dtypes.add(str(tensor.dtype).replace("paddle.", ""))
            if list(tensor.shape) != list(parameter.shape):
                raise CheckpointError(
                    f"Shape mismatch for {our_name}: the model expects {list(parameter.shape)}, "
                    f"the checkpoint has {list(tensor.shape)}."
                )
            parameter.set_value(tensor.astype(parameter.dtype))
        if dtype != "float32":  # the model is built in float32, and may hold some weights in bfloat16 on purpose
            model.to(dtype=dtype)
        model.eval()
        model.tokenizer_files = tokenizer_files(self.path)
        stored = "/".join(sorted(stored_dtypes))
        model.stored_dtype = stored
        loaded = "/".join(sorted({str(p.dtype).replace("paddle.", "") for p in model.parameters()}))
        held = stored if stored == loaded else f"stored as {stored}, loaded as {loaded}"
        logger.info(f"Loaded {self.path} ({self.layout} layout, {self.source.fmt}, {len(parameters)} tensors, {held}).")


def move_into(source_dir: str, destination: str) -> None:
    """Move every file of `source_dir` into `destination` with atomic renames, then remove `source_dir`."""
    os.makedirs(destination, exist_ok=True)
    for file_name in os.listdir(source_dir):
        staged = os.path.join(source_dir, file_name)
        if os.path.isfile(staged):
            make_readable_as_umask_allows(staged)
        os.replace(staged, os.path.join(destination, file_name))
    os.rmdir(source_dir)


def staging_dir(destination: str) -> str:
    """A fresh temporary directory next to `destination` (same filesystem, so renames are atomic)."""
    parent = os.path.dirname(os.path.abspath(destination))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=".staging-", dir=parent)


def save_pretrained(
    model,
    directory: str,
    extra_files: Optional[Iterator[str]] = None,
    state_dict: Optional[Dict[str, paddle.Tensor]] = None,
    processor=None,
) -> None:
    """Write config.json + model.safetensors (our layout) into `directory`; files appear only when complete.

    `state_dict` replaces the model's own (a LoRA model's merged weights, a resume checkpoint's adapters). The
    tokenizer and prompt files come from `processor.save_pretrained` when a processor is given, else `extra_files`
    are copied along: by default the files of the checkpoint the model was loaded from, so that the directory can be
    read again as it is. Nothing is left behind if writing fails.
    """
    if extra_files is None:
        extra_files = () if processor is not None else getattr(model, "tokenizer_files", ())
    state_dict = model.state_dict() if state_dict is None else state_dict
    staging = staging_dir(directory)
    try:
        state = {name: tensor.contiguous() for name, tensor in state_dict.items()}
        save_file(state, os.path.join(staging, SAFETENSORS_NAME), metadata={"format": "paddle"})
        model.config.save_pretrained(staging)
        for file in extra_files:
            shutil.copy2(file, staging)
        if processor is not None:
            processor.save_pretrained(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    move_into(staging, directory)


def tokenizer_files(directory: str) -> List[str]:
    """The tokenizer/processor files present in `directory`."""
    return [os.path.join(directory, f) for f in TOKENIZER_FILES if os.path.isfile(os.path.join(directory, f))]
