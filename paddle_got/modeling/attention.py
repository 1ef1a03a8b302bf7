"""Attention math on feature-major heads `[batch, heads, head_dim, seq]`: masks, rotary, softmax attention.

Shared by the decoder layers and the KV caches (`kv_cache.py`), which own the decode step's kernel choice.
"""

import math
from typing import Optional, Tuple

import paddle
import paddle.nn.functional as F


def append_zero_columns(tensor: paddle.Tensor, extra: int) -> paddle.Tensor:
    """`[..., n]` -> `[..., n + extra]`, zeros after (concatenated on a 2-D view: the N-D concat is slow on CPU)."""
    if extra == 0:
        return tensor
    rows = tensor.reshape([-1, tensor.shape[-1]])
    grown = paddle.concat([rows, paddle.zeros([rows.shape[0], extra], tensor.dtype)], axis=1)
    return grown.reshape(tensor.shape[:-1] + [-1])


def broadcastable_to_heads(table: paddle.Tensor, num_heads: int) -> paddle.Tensor:
    """A per-row table `[B, 1, m, n]` made cheap to combine with `[B, num_heads, m, n]`.

    One row: the rank-2 `[m, n]` (a view); several: expanded to `[B, num_heads, m, n]` (one copy, then every
    layer's elementwise op runs at full speed instead of Paddle's slow size-1-axis broadcast).
    """
    if table.shape[0] == 1:
        return table.reshape(table.shape[2:])
    return table.expand([table.shape[0], num_heads] + table.shape[2:])


def rotate_half(states: paddle.Tensor) -> paddle.Tensor:
    """`[x1, x2] -> [-x2, x1]` along the head_dim axis of `[B, heads, d, L]`."""
    first, second = states.chunk(2, axis=2)
    return paddle.concat([-second, first], axis=2)


def apply_rotary(states: paddle.Tensor, cos: paddle.Tensor, sin: paddle.Tensor) -> paddle.Tensor:
    """Rotate `[B, heads, d, L]` query or key states by their positions (tables from `broadcastable_to_heads`)."""
    return states * cos + rotate_half(states) * sin


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
    query: paddle.Tensor,
    keys: paddle.Tensor,
    values: paddle.Tensor,
    attention_bias: Optional[paddle.Tensor],
    token_major: bool = False,
) -> paddle.Tensor:
    """Softmax attention on feature-major heads: query `[B, H, d, L]`, keys/values `[B, H, d, K]` (or token-major
    `[B, H, K, d]`, as the KV caches hold them, with `token_major`) -> `[B, H, d, L]`.

    `attention_bias` is additive, `[L, K]` or `[B, H, L, K]`; None means plain causal (K == L).
    """
    length = query.shape[-1]
    if use_fused_attention(query):
        rows = [0, 3, 1, 2]  # [B, H, d, L] -> [B, L, H, d], the layout of the fused kernel
        key_rows = [0, 2, 1, 3] if token_major else rows
        if attention_bias is not None and attention_bias.ndim == 2:
            attention_bias = attention_bias.unsqueeze([0, 1])
        attended = F.scaled_dot_product_attention(
            query.transpose(rows),
            keys.transpose(key_rows),
            values.transpose(key_rows),
            attn_mask=attention_bias,
            is_causal=attention_bias is None and length > 1,
        )
        return attended.transpose([0, 2, 3, 1])
    if attention_bias is None and length > 1:
        attention_bias = causal_bias(length, query.dtype)
    scaled = query * (1.0 / math.sqrt(query.shape[2]))
    scores = paddle.matmul(scaled, keys, transpose_x=True, transpose_y=token_major)  # [B, H, L, K]
    if attention_bias is not None:
        scores = scores + attention_bias
    probabilities = F.softmax(scores, axis=-1)
    return paddle.matmul(values, probabilities, transpose_x=token_major, transpose_y=True)


def repeat_kv_heads(keys: paddle.Tensor, values: paddle.Tensor, num_heads: int):
    """Grouped KV heads `[B, kv_heads, ...]` repeated to `num_heads` along axis 1 (unchanged when they are equal)."""
    if keys.shape[1] == num_heads:
        return keys, values
    repeats = num_heads // keys.shape[1]
    return paddle.repeat_interleave(keys, repeats, axis=1), paddle.repeat_interleave(values, repeats, axis=1)


Rotary = Tuple[Tuple[paddle.Tensor, paddle.Tensor], Tuple[paddle.Tensor, paddle.Tensor]]


def rotate_query_and_keys(query: paddle.Tensor, keys: paddle.Tensor, rotary: Rotary):
    """`(query, keys)` rotated by their positions; `rotary` is `((cos, sin) for query heads, (cos, sin) for KV
    heads)`."""
    (query_cos, query_sin), (key_cos, key_sin) = rotary
    return apply_rotary(query, query_cos, query_sin), apply_rotary(keys, key_cos, key_sin)


def rotary_attend(
    query: paddle.Tensor,
    keys: paddle.Tensor,
    values: paddle.Tensor,
    rotary: Rotary,
    attention_bias: Optional[paddle.Tensor],
) -> paddle.Tensor:
    """Attention without a cache: rotate query and keys, repeat grouped KV heads, attend. `[B, H, d, L]` out."""
    query, keys = rotate_query_and_keys(query, keys, rotary)
    return attend(query, *repeat_kv_heads(keys, values, query.shape[1]), attention_bias)


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
