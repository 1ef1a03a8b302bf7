"""The Qwen2 decoder of GOT: RMSNorm, RoPE, attention with a KV cache, SwiGLU MLP (docs/design.md §1).

Parameter names match paddlenlp / PaddleMIX (`embed_tokens`, `layers.N.self_attn.q_proj`, `layers.N.mlp.gate_proj`,
`input_layernorm`, `post_attention_layernorm`, `norm`).

Attention works on feature-major heads, `[batch, heads, head_dim, seq]` (see `feature_major`); for one new
token that layout is a plain reshape of the projection. Paddle's CPU broadcasting is slow when a size-1 axis comes
before others, so per-row tables (rotary, attention bias) are expanded to the heads once per forward and then
shared by every layer.
"""

from typing import Optional, Tuple, Union

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.distributed.fleet.utils import recompute

from ..config import GOTConfig
from ..kernels import decode_cpu
from .attention import Rotary, broadcastable_to_heads, build_attention_bias, position_ids_from_mask, rotary_attend
from .feature_major import linear_from_feature_major, linear_to_feature_major
from .kv_cache import KVCache, RowCache

Cache = Union[KVCache, RowCache]


class Qwen2RMSNorm(nn.Layer):
    """`x / rms(x) * weight`, statistics in float32."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = self.create_parameter([hidden_size], default_initializer=nn.initializer.Constant(1.0))

    def forward(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        normed = decode_cpu.rms_norm(hidden_states, self.weight, self.eps)  # in CPU inference: our kernel
        if normed is not None:
            return normed
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.astype("float32")
        variance = paddle.square(hidden_states).mean(axis=-1, keepdim=True)
        hidden_states = hidden_states * paddle.rsqrt(variance + self.eps)
        return self.weight * hidden_states.astype(input_dtype)


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
        rotary: Rotary,
        attention_bias: Optional[paddle.Tensor],
        cache: Optional[Cache],
    ) -> paddle.Tensor:
        """`[B, L, hidden]` -> `[B, L, hidden]`.

        `rotary` is `((cos, sin) for the query heads, (cos, sin) for the KV heads)`; `attention_bias` as in `attend`.
        With a cache, the cache runs the attention step (and chooses its kernel).
        """
        query = project_heads(self.q_proj, hidden_states, self.num_heads)
        keys = project_heads(self.k_proj, hidden_states, self.num_kv_heads)
        values = project_heads(self.v_proj, hidden_states, self.num_kv_heads)
        if cache is not None:
            attended = cache.attend(self.layer_index, query, keys, values, rotary, attention_bias)
        else:
            attended = rotary_attend(query, keys, values, rotary, attention_bias)
        return project_output(self.o_proj, attended)


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
        mixed = decode_cpu.silu_times(gate, up)  # in CPU inference: our kernel, in place
        if mixed is None:
            mixed = F.silu(gate) * up
        return decode_cpu.linear(self.down_proj, mixed)


class Qwen2DecoderLayer(nn.Layer):
    """Pre-norm block: attention then MLP, each with a residual."""

    def __init__(self, config: GOTConfig, layer_index: int):
        super().__init__()
        self.self_attn = Qwen2Attention(config, layer_index)
        self.mlp = Qwen2MLP(config)
        self.input_layernorm = Qwen2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = Qwen2RMSNorm(config.hidden_size, config.rms_norm_eps)

    def kernel_tensors(self) -> Optional[Tuple[paddle.Tensor, ...]]:
        """This layer's tensors in `decode_cpu.LAYER_TENSORS` order, for a decode step in one kernel call; None
        when a projection is not a plain `nn.Linear` (e.g. LoRA), which only its own forward runs."""
        attention, mlp = self.self_attn, self.mlp
        projections = (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj)
        if any(type(layer) is not nn.Linear for layer in (*projections, mlp.gate_proj, mlp.up_proj, mlp.down_proj)):
            return None
        return (
            self.input_layernorm.weight,
            *(tensor for layer in projections[:3] for tensor in (layer.weight, layer.bias)),
            attention.o_proj.weight,
            self.post_attention_layernorm.weight,
            mlp.gate_proj.weight,
            mlp.up_proj.weight,
            mlp.down_proj.weight,
        )

    def forward(self, hidden_states, rotary, attention_bias, cache):
        """`[B, L, hidden]` -> `[B, L, hidden]`."""
        hidden_states = hidden_states + self.self_attn(
            self.input_layernorm(hidden_states), rotary, attention_bias, cache
        )
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


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
        cache: Optional[Cache] = None,
    ) -> paddle.Tensor:
        """Run the decoder layers. Returns the final-normed hidden states `[B, L, hidden]`.

        `attention_mask` covers the cached positions plus the new ones (`[B, past + L]`); `cache` (a `KVCache`, or
        a `RowCache` for one token per running row) is filled in place and advanced by `L`.
        """
        batch, length, _ = inputs_embeds.shape
        heads, kv_heads = self.config.num_attention_heads, self.config.num_key_value_heads
        dtype = inputs_embeds.dtype
        if cache is not None:
            position_ids, attention_bias = cache.prepare(batch, length, attention_mask, position_ids, heads, dtype)
        else:
            if position_ids is None and attention_mask is not None:
                position_ids = position_ids_from_mask(attention_mask, length)
            elif position_ids is None:
                position_ids = paddle.arange(length).unsqueeze(0).expand([batch, -1])
            attention_bias = build_attention_bias(attention_mask, length, 0, length, heads, dtype)
        tables = self.rotary_emb(position_ids, dtype)
        query_rotary = tuple(broadcastable_to_heads(table, heads) for table in tables)
        key_rotary = query_rotary if kv_heads == heads else tuple(broadcastable_to_heads(t, kv_heads) for t in tables)
        rotary = (query_rotary, key_rotary)
        hidden_states = self.decode_step_in_one_call(inputs_embeds, rotary, attention_bias, cache)
        if hidden_states is not None:
            cache.advance(length)
            return self.norm(hidden_states)
        hidden_states = inputs_embeds
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and cache is None:
                hidden_states = recompute(lambda h, layer=layer: layer(h, rotary, attention_bias, None), hidden_states)
            else:
                hidden_states = layer(hidden_states, rotary, attention_bias, cache)
        if cache is not None:
            cache.advance(length)
        return self.norm(hidden_states)

    def decode_step_in_one_call(
        self,
        inputs_embeds: paddle.Tensor,
        rotary: Rotary,
        attention_bias: Optional[paddle.Tensor],
        cache: Optional[Cache],
    ) -> Optional[paddle.Tensor]:
        """A cached one-token step through every layer in one call of our CPU kernels (`decode_cpu.decode_layers`):
        `[B, 1, hidden]` before the final norm, or None where they do not apply."""
        if cache is None or inputs_embeds.shape[1] != 1:
            return None
        columns = cache.kernel_columns()
        if columns is None:
            return None
        layer_tensors = [layer.kernel_tensors() for layer in self.layers]
        return decode_cpu.decode_layers(layer_tensors, inputs_embeds, rotary, attention_bias, columns, self.config)
