"""The `transformers==4.51.3` reference: tiny random GotOcr2 models, saved in the layouts of docs/design.md §6.

The original-GOT renaming below is written from the spec, independently of `paddle_got.checkpoint`, so that a
wrong mapping in the library cannot agree with itself.
"""

import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import GotOcr2Config, GotOcr2ForConditionalGeneration

from make_tiny_tokenizer import train_byte_bpe

from paddle_got.tokenizer import write_tiktoken_ranks

VOCAB_SIZE = 300
IMG_START_ID, IMG_END_ID, IMG_PAD_ID = 297, 298, 299


@dataclass
class TinyShape:
    """One tiny architecture: vision grid/window/global layout and decoder sizes."""

    name: str
    image_size: int = 64
    patch_size: int = 8
    window_size: int = 3
    global_attn_indexes: List[int] = field(default_factory=lambda: [1])
    vision_layers: int = 3
    vision_hidden: int = 32
    vision_heads: int = 2
    output_channels: int = 16
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    kv_heads: int = 4
    rope_theta: float = 1e6
    tie_word_embeddings: bool = True
    vocab_size: int = VOCAB_SIZE
    img_start_id: int = IMG_START_ID
    img_end_id: int = IMG_END_ID
    img_pad_id: int = IMG_PAD_ID

    @property
    def tokens_per_tile(self) -> int:
        side = self.image_size // self.patch_size
        for _ in range(2):
            side = (side + 1) // 2
        return side * side


SHAPES = [
    # 8x8 grid, 3x3 windows padded to 9x9, one global block in the middle.
    TinyShape("grid8_win3_pad"),
    # 12x12 grid, 4x4 windows (no padding), two global blocks, grouped KV heads, another RoPE base.
    TinyShape(
        "grid12_win4_gqa",
        image_size=48,
        patch_size=4,
        window_size=4,
        global_attn_indexes=[0, 2],
        kv_heads=2,
        rope_theta=1e4,
    ),
    # 10x10 grid, 7x7 windows padded to 14x14, no global block, odd grid after the strided convs.
    TinyShape("grid10_win7_noglobal", image_size=80, window_size=7, global_attn_indexes=[], vision_layers=2),
]


def hf_config(shape: TinyShape) -> GotOcr2Config:
    """The transformers config of a tiny shape."""
    return GotOcr2Config(
        vision_config=dict(
            hidden_size=shape.vision_hidden,
            output_channels=shape.output_channels,
            num_hidden_layers=shape.vision_layers,
            num_attention_heads=shape.vision_heads,
            image_size=shape.image_size,
            patch_size=shape.patch_size,
            window_size=shape.window_size,
            global_attn_indexes=shape.global_attn_indexes,
            mlp_dim=2 * shape.vision_hidden,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=shape.vocab_size,
            hidden_size=shape.text_hidden,
            intermediate_size=3 * shape.text_hidden // 2,
            num_hidden_layers=shape.text_layers,
            num_attention_heads=shape.text_heads,
            num_key_value_heads=shape.kv_heads,
            rms_norm_eps=1e-6,
            rope_theta=shape.rope_theta,
            max_position_embeddings=4096,
            tie_word_embeddings=shape.tie_word_embeddings,
        ),
        image_token_index=shape.img_pad_id,
        tie_word_embeddings=shape.tie_word_embeddings,
    )


def build_reference(shape: TinyShape, seed: int = 0) -> GotOcr2ForConditionalGeneration:
    """A tiny GotOcr2 with every parameter random (norms near 1, rel-pos tables and pos_embed non-zero)."""
    torch.manual_seed(seed)
    model = GotOcr2ForConditionalGeneration(hf_config(shape)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if re.search(r"(norm|layernorm)\w*\.weight$", name) or "layer_norm" in name and name.endswith("weight"):
                parameter.copy_(1.0 + 0.1 * noise)
            else:
                parameter.copy_(0.08 * noise)
    return model


def hf_state_dict(model) -> Dict[str, torch.Tensor]:
    """The state dict as the HF checkpoint stores it (the tied head is not stored)."""
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if model.config.text_config.tie_word_embeddings:
        state.pop("language_model.lm_head.weight", None)
    return state


_GOT_RENAMES = [
    (r"^language_model\.model\.", "model."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^vision_tower\.patch_embed\.projection\.", "model.vision_tower_high.patch_embed.proj."),
    (r"^vision_tower\.pos_embed$", "model.vision_tower_high.pos_embed"),
    (r"^vision_tower\.layers\.(\d+)\.layer_norm1\.", r"model.vision_tower_high.blocks.\1.norm1."),
    (r"^vision_tower\.layers\.(\d+)\.layer_norm2\.", r"model.vision_tower_high.blocks.\1.norm2."),
    (r"^vision_tower\.layers\.", "model.vision_tower_high.blocks."),
    (r"^vision_tower\.neck\.conv1\.", "model.vision_tower_high.neck.0."),
    (r"^vision_tower\.neck\.layer_norm1\.", "model.vision_tower_high.neck.1."),
    (r"^vision_tower\.neck\.conv2\.", "model.vision_tower_high.neck.2."),
    (r"^vision_tower\.neck\.layer_norm2\.", "model.vision_tower_high.neck.3."),
    (r"^multi_modal_projector\.conv_upsampler1\.", "model.vision_tower_high.net_2."),
    (r"^multi_modal_projector\.conv_upsampler2\.", "model.vision_tower_high.net_3."),
    (r"^multi_modal_projector\.multimodal_projector\.", "model.mm_projector_vary."),
]


def got_state_dict(model) -> Dict[str, torch.Tensor]:
    """The state dict renamed to the original GOT release's keys; lm_head stored as the release does."""
    state = {}
    for name, tensor in model.state_dict().items():
        for pattern, replacement in _GOT_RENAMES:
            new_name, count = re.subn(pattern, replacement, name)
            if count:
                name = new_name
                break
        state[name] = tensor.detach().clone().contiguous()
    return state


def got_config_dict(shape: TinyShape, with_vision_config: bool = True) -> dict:
    """A config.json of the original GOT layout (flat Qwen2 fields) for a tiny shape."""
    text = hf_config(shape).text_config
    config = {
        "architectures": ["GOTQwenForCausalLM"],
        "model_type": "GOT",
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_key_value_heads,
        "rms_norm_eps": text.rms_norm_eps,
        "rope_theta": text.rope_theta,
        "max_position_embeddings": text.max_position_embeddings,
        "tie_word_embeddings": True,
        "im_start_token": shape.img_start_id,
        "im_end_token": shape.img_end_id,
        "im_patch_token": shape.img_pad_id,
        "image_token_len": shape.tokens_per_tile,
        "use_im_start_end": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "freeze_vision_tower": False,
    }
    if with_vision_config:
        config["vision_config"] = hf_config(shape).vision_config.to_dict()
    return config


def save_hf(model, directory: str) -> str:
    """Save in the Hugging Face `got_ocr2` layout; returns `directory`."""
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def save_got(model, shape: TinyShape, directory: str, weights: str = "safetensors") -> str:
    """Save in the original GOT layout, as `model.safetensors` or `pytorch_model.bin`; returns `directory`."""
    os.makedirs(directory, exist_ok=True)
    state = got_state_dict(model)
    if weights == "safetensors":
        save_file(state, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, os.path.join(directory, "pytorch_model.bin"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(got_config_dict(shape), f)
    return directory


def random_pixels(num_tiles: int, shape: TinyShape, seed: int = 0) -> np.ndarray:
    """Normalised-looking float32 tiles `[T, 3, S, S]`."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((num_tiles, 3, shape.image_size, shape.image_size)).astype("float32")


def prompt_ids(num_tiles: int, shape: TinyShape, text_before: int, text_after: int, seed: int = 0) -> List[int]:
    """Random text ids around an `<img> <imgpad>*n </img>` block (no block when `num_tiles` is 0)."""
    rng = np.random.default_rng(seed)
    before = rng.integers(0, shape.img_start_id, text_before).tolist()
    after = rng.integers(0, shape.img_start_id, text_after).tolist()
    if num_tiles == 0:
        return before + after
    image = [shape.img_start_id] + [shape.img_pad_id] * (num_tiles * shape.tokens_per_tile) + [shape.img_end_id]
    return before + image + after


def left_pad(sequences: List[List[int]], pad_id: int = 0):
    """`(input_ids, attention_mask)` int64 arrays `[B, L]`, left-padded."""
    length = max(len(s) for s in sequences)
    ids = np.full((len(sequences), length), pad_id, dtype="int64")
    mask = np.zeros((len(sequences), length), dtype="int64")
    for row, sequence in enumerate(sequences):
        ids[row, length - len(sequence) :] = sequence
        mask[row, length - len(sequence) :] = 1
    return ids, mask


def position_ids(mask: np.ndarray) -> np.ndarray:
    """HF generation's positions for a left-padded batch: 0 at each row's first real token, 1 on pads."""
    positions = mask.cumsum(-1) - 1
    positions[mask == 0] = 1
    return positions


def reference_forward(model, ids: np.ndarray, mask: np.ndarray = None, pixels: np.ndarray = None, labels=None):
    """Run the reference; returns `(logits [B, L, V] float32 numpy, loss float or None)`."""
    kwargs = {"input_ids": torch.from_numpy(ids)}
    if mask is not None:
        kwargs["attention_mask"] = torch.from_numpy(mask)
        kwargs["position_ids"] = torch.from_numpy(position_ids(mask))
    if pixels is not None:
        kwargs["pixel_values"] = torch.from_numpy(pixels)
    if labels is not None:
        kwargs["labels"] = torch.from_numpy(labels)
    with torch.no_grad():
        output = model(**kwargs)
    loss = None if output.loss is None else float(output.loss)
    return output.logits.float().numpy(), loss


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    """`||ours - reference|| / ||reference||`."""
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


# --- a tiny Qwen-1 style vocabulary ---------------------------------------------------------------------------

TOKENIZER_CORPUS = (
    "General OCR Theory reads plain text, formatted text, tables and formulas. OCR with format: the quick brown "
    "fox jumps over the lazy dog 0123456789. You should follow the instructions carefully and explain your "
    "answers in detail. system user assistant red green blue patch reference across multi pages."
)
NUM_SPECIAL_TOKENS = 3 + 205 + 9  # endoftext, im_start, im_end; 205 extras; the GOT specials


def write_tiktoken(directory: str, num_merges: int = 100) -> int:
    """Write `qwen.tiktoken` (base64 token, rank per line); returns the vocabulary size with the specials."""
    ranks = train_byte_bpe(TOKENIZER_CORPUS, num_merges)
    write_tiktoken_ranks(os.path.join(directory, "qwen.tiktoken"), ranks)
    return len(ranks) + NUM_SPECIAL_TOKENS


def tokenizer_shape(base: TinyShape, num_ranks: int) -> TinyShape:
    """`base` with the vocabulary and image token ids of a tiny tokenizer of `num_ranks` BPE ranks."""
    first_special = num_ranks
    img_start = first_special + 3 + 205 + 6  # after endoftext/im_start/im_end, extras, ref/box/quad pairs
    return TinyShape(
        **{
            **base.__dict__,
            "vocab_size": first_special + NUM_SPECIAL_TOKENS,
            "img_start_id": img_start,
            "img_end_id": img_start + 1,
            "img_pad_id": img_start + 2,
        }
    )


def build_ocr_reference(shape: TinyShape, num_ranks: int, seed: int = 0) -> GotOcr2ForConditionalGeneration:
    """A reference whose greedy output is mostly ordinary text: the rows of the tied embedding that belong to
    special tokens are damped, except `<|endoftext|>` and `<|im_end|>`, which can still end a sequence."""
    model = build_reference(shape, seed)
    ending = {num_ranks, num_ranks + 2}  # <|endoftext|>, <|im_end|>
    damped = [token for token in range(num_ranks, shape.vocab_size) if token not in ending]
    with torch.no_grad():
        model.get_input_embeddings().weight[damped] *= 0.05
    return model


def reference_generate(
    model, batch: dict, max_new_tokens: int, no_repeat_ngram_size: int, eos_token_ids: Sequence[int], pad_token_id: int
) -> List[List[int]]:
    """Greedy `generate` of the reference; the new tokens of each row up to and including its first end token."""
    kwargs = dict(
        input_ids=torch.from_numpy(batch["input_ids"]),
        attention_mask=torch.from_numpy(batch["attention_mask"]),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=list(eos_token_ids),
        pad_token_id=pad_token_id,
    )
    if batch.get("pixel_values") is not None:
        kwargs["pixel_values"] = torch.from_numpy(batch["pixel_values"])
    if no_repeat_ngram_size:
        kwargs["no_repeat_ngram_size"] = no_repeat_ngram_size
    with torch.no_grad():
        generated = model.generate(**kwargs)[:, batch["input_ids"].shape[1] :].tolist()
    outputs = []
    for row in generated:
        ends = [index for index, token in enumerate(row) if token in eos_token_ids]
        outputs.append(row[: ends[0] + 1] if ends else row)
    return outputs


def expected_texts(checkpoint, requests, no_repeat_ngram_size, max_new_tokens):
    """The reference's greedy texts (decoded, stripped) for each OCRRequest, one request at a time."""
    from paddle_got.processing import GOTProcessor

    processor = GOTProcessor.from_pretrained(checkpoint.directory)
    tokenizer = processor.tokenizer
    texts = []
    for request in requests:
        tokens = reference_generate(
            checkpoint.model,
            processor([request]),
            max_new_tokens,
            no_repeat_ngram_size,
            tokenizer.eos_token_ids,
            tokenizer.pad_token_id,
        )[0]
        texts.append(tokenizer.decode(tokens).strip())
    return texts


# The official demo's system message, written out here rather than taken from paddle_got.constants.
SYSTEM_MESSAGE = "You should follow the instructions carefully and explain your answers in detail."


def hand_prompt(processor, num_pads, query):
    """The spec's template, segment by segment: specials by id, plain text through the tokenizer."""
    tokenizer = processor.tokenizer
    special = tokenizer.token_id
    return (
        [special("<|im_start|>")]
        + tokenizer.encode("system\n" + SYSTEM_MESSAGE)
        + [special("<|im_end|>")]
        + [special("<|im_start|>")]
        + tokenizer.encode("user\n")
        + [special("<img>")]
        + [special("<imgpad>")] * num_pads
        + [special("</img>")]
        + tokenizer.encode("\n" + query)
        + [special("<|im_end|>")]
        + [special("<|im_start|>")]
        + tokenizer.encode("assistant\n")
    )
