"""The Qwen2 decoder of GOT: RMSNorm, RoPE, attention with a KV cache, SwiGLU MLP (got_spec.md section 1).

Parameter names match paddlenlp / PaddleMIX (`embed_tokens`, `layers.N.self_attn.q_proj`, `layers.N.mlp.gate_proj`,
`input_layernorm`, `post_attention_layernorm`, `norm`).

Attention works on feature-major heads, `[batch, heads, head_dim, seq]` (see `feature_major`); for one new
token that layout is a plain reshape of the projection. Paddle's CPU broadcasting is slow when a size-1 axis comes
before others, so per-row tables (rotary, attention bias) are expanded to the heads once per forward and then
shared by every layer.
"""

import math
from typing import List, Optional, Tuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.distributed.fleet.utils import recompute

from ..config import GOTConfig
from ..kernels import decode_cpu
from .feature_major import linear_from_feature_major, linear_to_feature_major


def append_zero_columns(tensor: paddle.Tensor, extra: int) -> paddle.Tensor:
    """`[..., n]` -> `[..., n + extra]`, zeros after (concatenated on a 2-D view: the N-D concat is slow on CPU)."""
    if extra == 0:
        return tensor
    rows = tensor.reshape([-1, tensor.shape[-1]])
    grown = paddle.concat([rows, paddle.zeros([rows.shape[0], extra], tensor.dtype)], axis=1)
    return grown.reshape(tensor.shape[:-1] + [-1])


class KVCache:
    """Keys and values of every decoder layer, feature-major `[batch, kv_heads, head_dim, capacity]`.

    `length` columns are filled, the same for every row (left padding keeps rows aligned). A layer's first
    `update` stores the prompt (its batch and dtype become the buffers') and attends over exactly it; later updates
    write columns at `length` and attend over the whole capacity, the free columns hidden by the attention bias (see
    `key_length`; the CPU decode kernel reads only the filled ones). Whenever it must grow, capacity grows to GROWTH
    columns beyond what is needed, the prompt's included, so the next GROWTH steps neither copy nor slice the
    buffers. `advance` moves `length` once all layers have written.
    """

    GROWTH = 256

    def __init__(self, config: GOTConfig):
        self.num_layers = config.num_hidden_layers
        self.keys: List[Optional[paddle.Tensor]] = [None] * self.num_layers
        self.values: List[Optional[paddle.Tensor]] = [None] * self.num_layers
        self.capacity = 0
        self.length = 0

    def reserve(self, total_length: int) -> None:
        """Make room for `total_length` positions, and GROWTH more (see the class docstring)."""
        if total_length <= self.capacity:
            return
        extra = total_length + self.GROWTH - self.capacity
        if self.length > 0:
            self.keys = [append_zero_columns(keys, extra) for keys in self.keys]
            self.values = [append_zero_columns(values, extra) for values in self.values]
        self.capacity += extra

    def key_length(self, new_tokens: int) -> int:
        """How many key columns attention sees when `new_tokens` arrive: just them on an empty cache, else all."""
        return new_tokens if self.length == 0 else self.capacity

    def buffers(self, layer: int) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """Layer `layer`'s key and value buffers `[B, kv_heads, d, capacity]`, for a kernel that writes column
        `length` itself (instead of `update`)."""
        return self.keys[layer], self.values[layer]

    def update(self, layer: int, keys: paddle.Tensor, values: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """Store `[B, kv_heads, d, new]` keys/values at `length`; return the `key_length` columns to attend over."""
        new_tokens = keys.shape[-1]
        if self.length == 0:
            self.keys[layer] = append_zero_columns(keys, self.capacity - new_tokens)
            self.values[layer] = append_zero_columns(values, self.capacity - new_tokens)
            return keys, values
        end = self.length + new_tokens
        self.keys[layer][:, :, :, self.length : end] = keys
        self.values[layer][:, :, :, self.length : end] = values
        return self.keys[layer], self.values[layer]

    def advance(self, new_tokens: int) -> None:
        """Mark `new_tokens` more positions as filled (called once after all layers ran)."""
        self.length += new_tokens

    def select_rows(self, rows: paddle.Tensor) -> None:
        """Keep only the batch rows `rows` (int64 `[n]`), e.g. once other sequences have finished."""
        self.keys = [paddle.index_select(keys, rows) for keys in self.keys]
        self.values = [paddle.index_select(values, rows) for values in self.values]


class Qwen2RMSNorm(nn.Layer):
    """`x / rms(x) * weight`, statistics in float32."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = self.create_parameter([hidden_size], default_initializer=nn.initializer.Constant(1.0))

    def forward(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        normed = decode_cpu.rms_norm(hidden_states, self.weight, self.eps)  # a few rows on CPU: our kernel
        if normed is not None:
            return normed
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.astype("float32")
        variance = paddle.square(hidden_states).mean(axis=-1, keepdim=True)
        hidden_states = hidden_states * paddle.rsqrt(variance + self.eps)
        return self.weight * hidden_states.astype(input_dtype)


def broadcastable_to_heads(table: paddle.Tensor, num_heads: int) -> paddle.Tensor:
    """A per-row table `[B, 1, m, n]` made cheap to combine with `[B, num_heads, m, n]`.

    One row: the rank-2 `[m, n]` (a view); several: expanded to `[B, num_heads, m, n]` (one copy, then every
    layer's elementwise op runs at full speed instead of Paddle's slow size-1-axis broadcast).
    """
    if table.shape[0] == 1:
        return table.reshape(table.shape[2:])
    return table.expand([table.shape[0], num_heads] + table.shape[2:])


class RotaryEmbedding(nn.Layer):
    """Rotary position tables: `cos`, `sin` `[batch, 1, head_dim, seq]` (feature-major) for given position ids."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        exponents = paddle.arange(0, head_dim, 2, dtype="float32") / head_dim
        self.register_buffer("inv_freq", 1.0 / (theta**exponents), persistable=False)

    def forward(self, position_ids: paddle.Tensor, dtype) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """`position_ids` int64 `[batch, seq]` -> `(cos, sin)`, each `[batch, 1, head_dim, seq]` in `dtype`."""
        freqs = position_ids.astype("float32").unsqueeze(1) * self.inv_freq.unsqueeze(-1)  # [B, d/2, L]
        angles = paddle.concat([freqs, freqs], axis=1).unsqueeze(1)
        return paddle.cos(angles).astype(dtype), paddle.sin(angles).astype(dtype)


def rotate_half(states: paddle.Tensor) -> paddle.Tensor:
    """`[x1, x2] -> [-x2, x1]` along the head_dim axis of `[B, heads, d, L]`."""
    first, second = states.chunk(2, axis=2)
    return paddle.concat([-second, first], axis=2)


def apply_rotary(states: paddle.Tensor, cos: paddle.Tensor, sin: paddle.Tensor) -> paddle.Tensor:
    """Rotate `[B, heads, d, L]` query or key states by their positions (tables from `broadcastable_to_heads`)."""
    return states * cos + rotate_half(states) * sin


def project_heads(linear: nn.Layer, hidden_states: paddle.Tensor, num_heads: int) -> paddle.Tensor:
    """`linear(hidden_states)` for `[B, L, hidden]`, laid out feature-major per head: `[B, heads, head_dim, L]`."""
    batch, length, _ = hidden_states.shape
    if length == 1:
        projected = decode_cpu.linear(linear, hidden_states)  # [B, 1, heads * d] is [B, heads, d, 1] in memory
    else:
        projected = linear_to_feature_major(linear, hidden_states)
    return projected.reshape([batch, num_heads, -1, length])


def project_output(linear: nn.Layer, attended: paddle.Tensor) -> paddle.Tensor:
    """`linear` applied to feature-major heads `[B, heads, d, L]`; returns `[B, L, hidden]`."""
    batch, _, _, length = attended.shape
    features = attended.reshape([batch, -1, length])  # [B, heads * d, L]
    if length == 1:
        return decode_cpu.linear(linear, features.reshape([batch, 1, -1]))
    return linear_from_feature_major(linear, features)


def additive_mask(allowed: paddle.Tensor, dtype) -> paddle.Tensor:
    """0 where `allowed`, else the dtype's lowest value (not -inf, so a fully masked row stays finite)."""
    return paddle.where(allowed, paddle.zeros([], dtype), paddle.full([], paddle.finfo(dtype).min, dtype))


def causal_bias(length: int, dtype) -> paddle.Tensor:
    """`[length, length]` additive mask: 0 on and below the diagonal, the dtype's lowest value above."""
    positions = paddle.arange(length)
    return additive_mask(positions.unsqueeze(0) <= positions.unsqueeze(1), dtype)


def use_fused_attention(tensor: paddle.Tensor) -> bool:
    """True on accelerators, where `scaled_dot_product_attention` picks flash / memory-efficient kernels."""
    return not tensor.place.is_cpu_place()


def attend(
    query: paddle.Tensor, keys: paddle.Tensor, values: paddle.Tensor, attention_bias: Optional[paddle.Tensor]
) -> paddle.Tensor:
    """Softmax attention on feature-major heads: query `[B, H, d, L]`, keys/values `[B, H, d, K]` -> `[B, H, d, L]`.

    `attention_bias` is additive, `[L, K]` or `[B, H, L, K]`; None means plain causal (K == L).
    """
    length = query.shape[-1]
    if use_fused_attention(query):
        rows = [0, 3, 1, 2]  # [B, H, d, L] -> [B, L, H, d], the layout of the fused kernel
        if attention_bias is not None and attention_bias.ndim == 2:
            attention_bias = attention_bias.unsqueeze([0, 1])
        attended = F.scaled_dot_product_attention(
            query.transpose(rows), keys.transpose(rows), values.transpose(rows),
            attn_mask=attention_bias, is_causal=attention_bias is None and length > 1,
        )
        return attended.transpose([0, 2, 3, 1])
    if attention_bias is None and length > 1:
        attention_bias = causal_bias(length, query.dtype)
    scores = paddle.matmul(query * (1.0 / math.sqrt(query.shape[2])), keys, transpose_x=True)  # [B, H, L, K]
    if attention_bias is not None:
        scores = scores + attention_bias
    probabilities = F.softmax(scores, axis=-1)
    return paddle.matmul(values, probabilities, transpose_y=True)


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
        rotary: Tuple[Tuple[paddle.Tensor, paddle.Tensor], Tuple[paddle.Tensor, paddle.Tensor]],
        attention_bias: Optional[paddle.Tensor],
        cache: Optional[KVCache],
    ) -> paddle.Tensor:
        """`[B, L, hidden]` -> `[B, L, hidden]`.

        `rotary` is `((cos, sin) for the query heads, (cos, sin) for the KV heads)`; `attention_bias` as in `attend`.
        """
        query = project_heads(self.q_proj, hidden_states, self.num_heads)
        keys = project_heads(self.k_proj, hidden_states, self.num_kv_heads)
        values = project_heads(self.v_proj, hidden_states, self.num_kv_heads)
        if cache is not None and cache.length > 0 and query.shape[-1] == 1:  # a decode step: our CPU kernel
            attended = decode_cpu.decode_attention(query, keys, values, rotary, *cache.buffers(self.layer_index),
                                                   cache.length, attention_bias)
            if attended is not None:
                return project_output(self.o_proj, attended)
        query_rotary, key_rotary = rotary
        query, keys = apply_rotary(query, *query_rotary), apply_rotary(keys, *key_rotary)
        if cache is not None:
            keys, values = cache.update(self.layer_index, keys, values)
        if self.num_kv_heads != self.num_heads:
            repeats = self.num_heads // self.num_kv_heads
            keys = paddle.repeat_interleave(keys, repeats, axis=1)
            values = paddle.repeat_interleave(values, repeats, axis=1)
        return project_output(self.o_proj, attend(query, keys, values, attention_bias))


class Qwen2MLP(nn.Layer):
    """SwiGLU: `down(silu(gate(x)) * up(x))`, no biases."""

    def __init__(self, config: GOTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias_attr=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias_attr=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias_attr=False)

    def forward(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        gate = decode_cpu.linear(self.gate_proj, hidden_states)
        up = decode_cpu.linear(self.up_proj, hidden_states)
        return decode_cpu.linear(self.down_proj, F.silu(gate) * up)


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
    attention_mask: Optional[paddle.Tensor], new_tokens: int, past_length: int, key_length: int, num_heads: int, dtype
) -> Optional[paddle.Tensor]:
    """Additive causal + padding bias for `new_tokens` queries at `past_length...` over `key_length` key columns.

    Key columns at or beyond `past_length + new_tokens` (a cache's free capacity) are hidden, as are padded
    positions of `attention_mask` (`[B, past_length + new_tokens]`, 1 real, 0 pad). Returns None for plain causal
    attention (nothing cached, no padding); else `[new_tokens, key_length]` when every row is the same, or
    `[B, num_heads, new_tokens, key_length]` (see `broadcastable_to_heads`); masked entries as in `additive_mask`.
    """
    filled = past_length + new_tokens
    needs_padding_mask = attention_mask is not None and not bool(attention_mask.astype("bool").all())
    if not needs_padding_mask and past_length == 0:
        return None
    query_positions = paddle.arange(past_length, filled).unsqueeze(1)
    key_positions = paddle.arange(key_length).unsqueeze(0)
    allowed = (key_positions <= query_positions).unsqueeze(0).unsqueeze(0)  # [1, 1, L, K]
    if needs_padding_mask:
        real_keys = append_zero_columns(attention_mask.astype(dtype), key_length - filled).astype("bool")
        allowed = paddle.logical_and(allowed, real_keys[:, None, None, :])  # [B, 1, L, K]
    return broadcastable_to_heads(additive_mask(allowed, dtype), num_heads)


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
        key_length = length
        if cache is not None:
            cache.reserve(past_length + length)
            key_length = cache.key_length(length)
        heads, kv_heads = self.config.num_attention_heads, self.config.num_key_value_heads
        tables = self.rotary_emb(position_ids, inputs_embeds.dtype)
        query_rotary = tuple(broadcastable_to_heads(table, heads) for table in tables)
        key_rotary = query_rotary if kv_heads == heads else tuple(broadcastable_to_heads(t, kv_heads) for t in tables)
        rotary = (query_rotary, key_rotary)
        attention_bias = build_attention_bias(
            attention_mask, length, past_length, key_length, heads, inputs_embeds.dtype
        )
        hidden_states = inputs_embeds
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and cache is None:
                hidden_states = recompute(lambda h, layer=layer: layer(h, rotary, attention_bias, None), hidden_states)
            else:
                hidden_states = layer(hidden_states, rotary, attention_bias, cache)
        if cache is not None:
            cache.advance(length)
        return self.norm(hidden_states)
