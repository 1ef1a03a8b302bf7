"""The Qwen2 decoder of GOT: RMSNorm, RoPE, attention with a KV cache, SwiGLU MLP (got_spec.md section 1).

Parameter names match paddlenlp / PaddleMIX (`embed_tokens`, `layers.N.self_attn.q_proj`, `layers.N.mlp.gate_proj`,
`input_layernorm`, `post_attention_layernorm`, `norm`). Activations are `[batch, seq, heads, head_dim]`, the
layout `paddle.nn.functional.scaled_dot_product_attention` takes, so no transposes are needed around attention.
"""

from typing import List, Optional, Tuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.distributed.fleet.utils import recompute

from ..config import GOTConfig


class KVCache:
    """Keys and values of every decoder layer, in buffers that grow in chunks (no copy per token).

    Each layer owns two buffers `[batch, capacity, kv_heads, head_dim]`; `length` positions are filled, the same
    for every row (left padding keeps rows aligned). `decode` reserves room, each layer writes at `length`, and
    `advance` moves `length` once all layers have written.
    """

    GROWTH = 256

    def __init__(self, config: GOTConfig, batch_size: int, dtype: str = "float32"):
        self.num_layers = config.num_hidden_layers
        self.row_shape = [config.num_key_value_heads, config.head_dim]
        self.batch_size = batch_size
        self.dtype = dtype
        self.keys: List[paddle.Tensor] = []
        self.values: List[paddle.Tensor] = []
        self.capacity = 0
        self.length = 0

    def reserve(self, total_length: int) -> None:
        """Make room for `total_length` positions, growing by at least GROWTH at a time."""
        if total_length <= self.capacity:
            return
        extra = max(total_length - self.capacity, self.GROWTH)
        block = [self.batch_size, extra] + self.row_shape
        if self.capacity == 0:
            self.keys = [paddle.zeros(block, self.dtype) for _ in range(self.num_layers)]
            self.values = [paddle.zeros(block, self.dtype) for _ in range(self.num_layers)]
        else:
            self.keys = [paddle.concat([k, paddle.zeros(block, self.dtype)], axis=1) for k in self.keys]
            self.values = [paddle.concat([v, paddle.zeros(block, self.dtype)], axis=1) for v in self.values]
        self.capacity += extra

    def update(self, layer: int, key: paddle.Tensor, value: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """Store `[batch, new, kv_heads, d]` keys/values at `length`; return every filled position of the layer."""
        end = self.length + key.shape[1]
        self.keys[layer][:, self.length : end] = key
        self.values[layer][:, self.length : end] = value
        return self.keys[layer][:, :end], self.values[layer][:, :end]

    def advance(self, new_tokens: int) -> None:
        """Mark `new_tokens` more positions as filled (called once after all layers ran)."""
        self.length += new_tokens

    def select_rows(self, rows: paddle.Tensor) -> None:
        """Keep only the batch rows `rows` (int64 `[n]`), e.g. once other sequences have finished."""
        self.keys = [paddle.index_select(k, rows) for k in self.keys]
        self.values = [paddle.index_select(v, rows) for v in self.values]
        self.batch_size = int(rows.shape[0])


class Qwen2RMSNorm(nn.Layer):
    """`x / rms(x) * weight`, statistics in float32."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = self.create_parameter([hidden_size], default_initializer=nn.initializer.Constant(1.0))

    def forward(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.astype("float32")
        variance = paddle.square(hidden_states).mean(axis=-1, keepdim=True)
        hidden_states = hidden_states * paddle.rsqrt(variance + self.eps)
        return self.weight * hidden_states.astype(input_dtype)


class RotaryEmbedding(nn.Layer):
    """Rotary position tables: `cos`, `sin` `[batch, seq, 1, head_dim]` for given position ids."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        exponents = paddle.arange(0, head_dim, 2, dtype="float32") / head_dim
        self.register_buffer("inv_freq", 1.0 / (theta**exponents), persistable=False)

    def forward(self, position_ids: paddle.Tensor, dtype) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """`position_ids` int64 `[batch, seq]` -> `(cos, sin)`, each `[batch, seq, 1, head_dim]` in `dtype`."""
        freqs = position_ids.astype("float32").unsqueeze(-1) * self.inv_freq  # [B, L, d/2]
        angles = paddle.concat([freqs, freqs], axis=-1).unsqueeze(2)
        return paddle.cos(angles).astype(dtype), paddle.sin(angles).astype(dtype)


def rotate_half(hidden_states: paddle.Tensor) -> paddle.Tensor:
    """`[x1, x2] -> [-x2, x1]` along the last axis."""
    first, second = hidden_states.chunk(2, axis=-1)
    return paddle.concat([-second, first], axis=-1)


def apply_rotary(states: paddle.Tensor, cos: paddle.Tensor, sin: paddle.Tensor) -> paddle.Tensor:
    """Rotate `[B, L, heads, d]` query or key states by their positions."""
    return states * cos + rotate_half(states) * sin


class Qwen2Attention(nn.Layer):
    """Causal self-attention; q/k/v with bias, o_proj without; grouped KV heads repeated when fewer."""

    def __init__(self, config: GOTConfig, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias_attr=False)

    def forward(
        self,
        hidden_states: paddle.Tensor,
        rotary: Tuple[paddle.Tensor, paddle.Tensor],
        attention_bias: Optional[paddle.Tensor],
        cache: Optional[KVCache],
    ) -> paddle.Tensor:
        """`[B, L, hidden]` -> `[B, L, hidden]`; `attention_bias` is additive `[B, 1, L, L_total]` or None."""
        batch, length, _ = hidden_states.shape
        query = self.q_proj(hidden_states).reshape([batch, length, self.num_heads, self.head_dim])
        key = self.k_proj(hidden_states).reshape([batch, length, self.num_kv_heads, self.head_dim])
        value = self.v_proj(hidden_states).reshape([batch, length, self.num_kv_heads, self.head_dim])
        cos, sin = rotary
        query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        if cache is not None:
            key, value = cache.update(self.layer_index, key, value)
        if self.num_kv_heads != self.num_heads:
            repeats = self.num_heads // self.num_kv_heads
            key = paddle.repeat_interleave(key, repeats, axis=2)
            value = paddle.repeat_interleave(value, repeats, axis=2)
        attended = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_bias, is_causal=attention_bias is None and length > 1
        )
        return self.o_proj(attended.reshape([batch, length, -1]))


class Qwen2MLP(nn.Layer):
    """SwiGLU: `down(silu(gate(x)) * up(x))`, no biases."""

    def __init__(self, config: GOTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias_attr=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias_attr=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias_attr=False)

    def forward(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        return self.down_proj(F.silu(self.gate_proj(hidden_states)) * self.up_proj(hidden_states))


class Qwen2DecoderLayer(nn.Layer):
    """Pre-norm block: attention then MLP, each with a residual."""

    def __init__(self, config: GOTConfig, layer_index: int):
        super().__init__()
        self.self_attn = Qwen2Attention(config, layer_index)
        self.mlp = Qwen2MLP(config)
        self.input_layernorm = Qwen2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = Qwen2RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden_states, rotary, attention_bias, cache):
        """`[B, L, hidden]` -> `[B, L, hidden]`."""
        hidden_states = hidden_states + self.self_attn(
            self.input_layernorm(hidden_states), rotary, attention_bias, cache
        )
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


def position_ids_from_mask(attention_mask: paddle.Tensor, new_tokens: int) -> paddle.Tensor:
    """Positions that start at 0 on each row's first real token (left padding); pads get 1, as HF does.

    `attention_mask` is `[B, L_total]` (1 real, 0 pad); returns int64 `[B, new_tokens]` for the last positions.
    """
    mask = attention_mask.astype("int64")
    positions = mask.cumsum(axis=-1) - 1
    positions = paddle.where(mask == 0, paddle.ones_like(positions), positions)
    return positions[:, -new_tokens:]


def build_attention_bias(
    attention_mask: Optional[paddle.Tensor], new_tokens: int, past_length: int, dtype
) -> Optional[paddle.Tensor]:
    """Additive causal + padding bias `[B, 1, new_tokens, past_length + new_tokens]`, or None if plain causal.

    Masked entries take the dtype's lowest value (not -inf), so a fully padded query row stays finite.
    """
    total = past_length + new_tokens
    needs_padding_mask = attention_mask is not None and not bool(attention_mask.astype("bool").all())
    if not needs_padding_mask and (past_length == 0 or new_tokens == 1):
        return None
    query_positions = paddle.arange(past_length, total).unsqueeze(1)
    key_positions = paddle.arange(total).unsqueeze(0)
    allowed = (key_positions <= query_positions).unsqueeze(0).unsqueeze(0)  # [1, 1, L, L_total]
    if needs_padding_mask:
        allowed = paddle.logical_and(allowed, attention_mask.astype("bool")[:, None, None, :])
    lowest = paddle.full([], paddle.finfo(dtype).min, dtype)
    return paddle.where(allowed, paddle.zeros([], dtype), lowest)


class Qwen2Model(nn.Layer):
    """Embeddings + decoder layers + final norm: `[B, L, hidden]` embeddings in, hidden states out."""

    def __init__(self, config: GOTConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.LayerList([Qwen2DecoderLayer(config, index) for index in range(config.num_hidden_layers)])
        self.norm = Qwen2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta)
        # Recompute each layer's activations in backward instead of storing them (training memory).
        self.gradient_checkpointing = False

    def decode(
        self,
        inputs_embeds: paddle.Tensor,
        attention_mask: Optional[paddle.Tensor] = None,
        position_ids: Optional[paddle.Tensor] = None,
        cache: Optional[KVCache] = None,
    ) -> paddle.Tensor:
        """Run the decoder layers. Returns the final-normed hidden states `[B, L, hidden]`.

        `attention_mask` covers the cached positions plus the new ones (`[B, past + L]`); `cache` is filled in
        place and advanced by `L`.
        """
        batch, length, _ = inputs_embeds.shape
        past_length = cache.length if cache is not None else 0
        if position_ids is None:
            if attention_mask is not None:
                position_ids = position_ids_from_mask(attention_mask, length)
            else:
                position_ids = paddle.arange(past_length, past_length + length).unsqueeze(0).expand([batch, -1])
        if cache is not None:
            cache.reserve(past_length + length)
        rotary = self.rotary_emb(position_ids, inputs_embeds.dtype)
        attention_bias = build_attention_bias(attention_mask, length, past_length, inputs_embeds.dtype)
        hidden_states = inputs_embeds
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and cache is None:
                hidden_states = recompute(lambda h, layer=layer: layer(h, rotary, attention_bias, None), hidden_states)
            else:
                hidden_states = layer(hidden_states, rotary, attention_bias, cache)
        if cache is not None:
            cache.advance(length)
        return self.norm(hidden_states)
