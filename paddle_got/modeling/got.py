"""GOTQwenForCausalLM: encode tiles -> project -> fill the `<imgpad>` slots -> Qwen2 decoder -> logits / loss.

Names follow PaddleMIX (`qwen2.vision_tower_high`, `qwen2.mm_projector_vary`, `qwen2.layers.N...`, `lm_head`) so
its checkpoints load unchanged; `paddle_got.checkpoint` maps the PyTorch and Hugging Face layouts onto them.
"""

from typing import Callable, List, NamedTuple, Optional

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..checkpoint import EMBEDDING_NAME, CheckpointWeights, check_dtype, save_pretrained
from ..config import GOTConfig
from ..constants import IGNORE_INDEX
from ..errors import CheckpointError
from ..kernels import decode_cpu
from .kv_cache import KVCache
from .qwen2 import Qwen2Model
from .vision import GOTVisionEncoder


class GOTCausalLMOutput(NamedTuple):
    """`logits` `[batch, seq, vocab]` float32; `loss` a float32 scalar when labels were given.

    A tuple, so that `paddle.DataParallel` finds the output tensors and reduces gradients correctly.
    """

    logits: paddle.Tensor
    loss: Optional[paddle.Tensor] = None
    past_key_values: Optional[KVCache] = None


class GOTQwenModel(Qwen2Model):
    """The Qwen2 decoder plus the vision tower and the projector that feed it."""

    def __init__(self, config: GOTConfig):
        super().__init__(config)
        self.vision_tower_high = GOTVisionEncoder(config.vision_config, output_dim=config.hidden_size)
        self.mm_projector_vary = nn.Linear(config.hidden_size, config.hidden_size)
        # Runs in place of the two layers above when set: `export.InferenceEncoder` (Paddle Inference on oneDNN).
        self.exported_encoder: Optional[Callable[[paddle.Tensor], paddle.Tensor]] = None

    @property
    def compute_dtype(self):
        """The dtype activations are computed in: the final norm's, which always follows the model's dtype (the
        decoder's products may keep bfloat16 weights on CPU, see `keep_decoder_weights_in_bfloat16`)."""
        return self.norm.weight.dtype

    def encode_images(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        """Tiles `[T, 3, S, S]` -> projected features `[T, tokens_per_tile, hidden]` (from `exported_encoder` when
        one is set)."""
        if self.exported_encoder is not None:
            return self.exported_encoder(pixel_values)
        return self.mm_projector_vary(self.vision_tower_high(pixel_values))

    def drop_dygraph_encoder(self) -> None:
        """Release the vision tower's and the projector's weights, for inference where `exported_encoder` runs in
        their place (the predictor's memory then reuses theirs); `encode_images` then needs `exported_encoder`."""
        del self.vision_tower_high
        del self.mm_projector_vary

    def embed(self, input_ids: paddle.Tensor, image_features: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        """Token embeddings `[B, L, hidden]` with the `<imgpad>` slots replaced by `image_features` in order.

        `image_features` is `[T, tokens_per_tile, hidden]`; the number of features must equal the number of slots.
        Without image features (decode steps, text-only prompts) `<imgpad>` is an ordinary token, as in both
        references: a model may generate it.
        """
        inputs_embeds = self.embed_tokens(input_ids).astype(self.compute_dtype)
        if image_features is None:
            return inputs_embeds
        slots = input_ids == self.config.im_patch_token
        num_slots = int(slots.astype("int64").sum())
        num_features = image_features.shape[0] * image_features.shape[1]
        if num_slots != num_features:
            raise ValueError(
                f"The prompt has {num_slots} image slots but the images give {num_features} features "
                f"({self.config.image_tokens_per_tile} per tile)."
            )
        features = image_features.reshape([-1, inputs_embeds.shape[-1]]).astype(inputs_embeds.dtype)
        return paddle.masked_scatter(inputs_embeds, slots.unsqueeze(-1).expand_as(inputs_embeds), features)


class GOTQwenForCausalLM(nn.Layer):
    """The whole GOT-OCR2.0 model. Build with a `GOTConfig`, or load with `from_pretrained(path)`."""

    def __init__(self, config: GOTConfig):
        super().__init__()
        self.config = config
        self.qwen2 = GOTQwenModel(config)
        self.lm_head = None
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias_attr=False)

    @classmethod
    def from_pretrained(
        cls, path: str, dtype: str = "float32", bfloat16_decode_weights: Optional[bool] = False
    ) -> "GOTQwenForCausalLM":
        """Load a local checkpoint directory in any supported layout (see `paddle_got.checkpoint`).

        `bfloat16_decode_weights` (float32 only) fills the decoder's product weights in bfloat16 straight from the
        checkpoint (see `keep_decoder_weights_in_bfloat16`; a float32 copy of them is never made); None does so when
        the checkpoint stores them in bfloat16.
        """
        check_dtype(dtype)
        weights = CheckpointWeights(path)
        if bfloat16_decode_weights is None:
            bfloat16_decode_weights = weights.stored_dtype(EMBEDDING_NAME) == "bfloat16"
        if bfloat16_decode_weights and dtype != "float32":
            raise CheckpointError(f"bfloat16 decoder weights are for float32 inference, not {dtype}.")
        with paddle.LazyGuard():
            model = cls(weights.config)
            if bfloat16_decode_weights:
                model.keep_decoder_weights_in_bfloat16()
        weights.load_into(model, dtype)
        for layer in model.decoder_product_layers():
            decode_cpu.move_to_huge_pages(layer.weight)  # the output head: read whole every step
        return model

    def save_pretrained(self, directory: str) -> None:
        """Write our layout (config.json + model.safetensors) atomically into `directory`."""
        save_pretrained(self, directory)

    def decoder_product_layers(self) -> List[nn.Layer]:
        """The layers whose products a decode step runs: every decoder layer's projections, an untied output head,
        and the embedding (the tied output head); their weights are what the step reads from memory."""
        layers = [layer for layer in self.qwen2.layers.sublayers() if type(layer) is nn.Linear]
        return layers + ([self.lm_head] if self.lm_head is not None else []) + [self.qwen2.embed_tokens]

    def keep_decoder_weights_in_bfloat16(self) -> None:
        """Store the decoder's product weights in bfloat16 for float32 CPU inference (biases stay float32).

        Our decode kernels widen them in registers, which is exact: a step reads half the bytes and only the
        summation order changes. Paddle's kernels get them widened per call (`decode_cpu.weight_in`). A checkpoint
        released in bfloat16 loses nothing; any other is rounded to bfloat16. On a model built under
        `paddle.LazyGuard` the new parameters stay empty until loading fills them.
        """
        for layer in self.decoder_product_layers():
            weight = layer.weight
            held = layer.create_parameter(
                weight.shape, dtype="bfloat16", default_initializer=nn.initializer.Constant(0.0)
            )
            held.stop_gradient = weight.stop_gradient
            if weight._is_initialized():
                held.set_value(weight.astype("bfloat16"))
            layer.weight = held

    def multiply_prompts_in_bfloat16(self) -> None:
        """Let the decoder's layers multiply more than `decode_cpu.MAX_ROWS` rows (a prompt's prefill) in bfloat16
        where the CPU does so natively (`decode_cpu.bfloat16_linear`: AMX, or oneDNN's AVX512-BF16 GEMM): their inputs
        are then rounded to bfloat16, as in torch's bfloat16 inference. Applies to weights kept in bfloat16
        (`keep_decoder_weights_in_bfloat16`); a decode step's few rows stay on our exact kernels."""
        for layer in self.qwen2.layers.sublayers():
            if type(layer) is nn.Linear:
                setattr(layer, decode_cpu.BFLOAT16_GEMM, True)

    def compute_logits(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        """`[B, L, hidden]` -> float32 logits `[B, L, vocab]` (tied to the embedding unless an lm_head exists)."""
        if self.lm_head is not None:
            return decode_cpu.linear(self.lm_head, hidden_states).astype("float32")
        embedding = self.qwen2.embed_tokens.weight  # [vocab, hidden]
        return decode_cpu.matmul(hidden_states, embedding, weight_is_out_by_in=True).astype("float32")

    def forward(
        self,
        input_ids: paddle.Tensor,
        pixel_values: Optional[paddle.Tensor] = None,
        attention_mask: Optional[paddle.Tensor] = None,
        position_ids: Optional[paddle.Tensor] = None,
        labels: Optional[paddle.Tensor] = None,
        past_key_values: Optional[KVCache] = None,
        image_features: Optional[paddle.Tensor] = None,
        last_logits_only: bool = False,
    ) -> GOTCausalLMOutput:
        """Logits (and loss when `labels` is given) for `input_ids` `[B, L]` int64.

        `pixel_values` `[T, 3, S, S]` holds the tiles of every sample in order; alternatively pass
        already projected `image_features` `[T, tokens_per_tile, hidden]` (generation encodes once).
        `attention_mask` `[B, past + L]` marks real tokens (left padding). `past_key_values` is a `KVCache`
        filled in place. `last_logits_only` computes logits for the last position only (`[B, 1, vocab]`).
        """
        if pixel_values is not None:
            image_features = self.qwen2.encode_images(pixel_values.astype(self.qwen2.compute_dtype))
        inputs_embeds = self.qwen2.embed(input_ids, image_features)
        hidden_states = self.qwen2.decode(inputs_embeds, attention_mask, position_ids, past_key_values)
        if last_logits_only:
            hidden_states = hidden_states[:, -1:]
        logits = self.compute_logits(hidden_states)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return GOTCausalLMOutput(logits=logits, loss=loss, past_key_values=past_key_values)


def causal_lm_loss_terms(logits: paddle.Tensor, labels: paddle.Tensor):
    """`(sum, count)`: summed cross-entropy of `logits[:, :-1]` against `labels[:, 1:]` over labels that are not
    IGNORE_INDEX, and how many there are (float32 scalars). Data-parallel training divides by a global count."""
    vocab = logits.shape[-1]
    shift_logits = logits[:, :-1].reshape([-1, vocab])
    shift_labels = labels[:, 1:].reshape([-1]).astype("int64")
    per_token = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="none")
    supervised = (shift_labels != IGNORE_INDEX).astype("float32")
    return per_token.reshape([-1]).sum(), supervised.sum()


def causal_lm_loss(logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
    """Mean cross-entropy over supervised tokens (as HF computes it); 0 when there is none, never 0/0."""
    total, count = causal_lm_loss_terms(logits, labels)
    return total / paddle.clip(count, min=1.0)
