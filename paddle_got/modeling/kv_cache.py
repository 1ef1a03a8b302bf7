"""The decoder's KV caches, and the one place that decides how a cached attention step runs.

Both caches hold every layer's keys and values token-major, `[rows, kv_heads, capacity, head_dim]` (each head's
cache one contiguous block, which is how a decode step reads it), and give the decoder the same calls: `prepare`
(positions and attention bias for the new tokens), `attend` (one layer: rotary, cache write, attention) and
`advance`. In CPU inference `attend` runs our kernel (`kernels/decode_cpu`), which reads only each row's filled
positions (and, in a prefill, attends causally without a score matrix); elsewhere it runs Paddle's ops.
`kernel_columns` tells the decoder where that kernel writes and reads when a whole step runs in one call
(`decode_cpu.decode_layers`).

- `KVCache`: a left-padded batch whose rows share one length (prompt prefill, `model(...)` calls with a cache).
- `RowCache`: continuous batching. Rows come and go, each with its own length and positions (no padding):
  rows `0..rows-1` are running, a new row takes the next slot, a finished row's slot is refilled by the last row.

Whenever a cache must grow, its capacity grows a quarter beyond what is needed, at most `growth` (GROWTH unless set)
positions, so that the next steps neither copy nor slice the buffers while a short prompt's cache stays small; the
buffers grow one layer at a time, never holding a second copy of the whole cache.
"""

from typing import List, Optional, Tuple

import numpy as np
import paddle

from ..config import GOTConfig
from ..kernels import decode_cpu
from .attention import (
    Rotary,
    additive_mask,
    append_zero_columns,
    attend,
    broadcastable_to_heads,
    build_attention_bias,
    position_ids_from_mask,
    repeat_kv_heads,
    rotate_query_and_keys,
)

GROWTH = 256
# (keys per layer, values per layer, position, positions): what a one-token step's kernel needs of a cache (see
# decode_cpu.decode_layers).
KernelColumns = Tuple[List[paddle.Tensor], List[paddle.Tensor], int, Optional[paddle.Tensor]]


def append_zero_positions(buffer: paddle.Tensor, extra: int) -> paddle.Tensor:
    """A token-major cache buffer `[rows, kv_heads, n, d]` -> `[rows, kv_heads, n + extra, d]`, zeros after (each
    head's block is contiguous, so this is `append_zero_columns` on `[rows, kv_heads, n * d]`)."""
    rows, kv_heads, _, head_dim = buffer.shape
    flat = buffer.reshape([rows, kv_heads, -1])
    return append_zero_columns(flat, extra * head_dim).reshape([rows, kv_heads, -1, head_dim])


def grown_capacity(total_length: int, growth: int) -> int:
    """The capacity a cache takes when it must hold `total_length` positions: a quarter more, at most `growth` more
    (and at least one)."""
    return total_length + min(growth, max(1, total_length // 4))


def grow_in_place(buffers: List[paddle.Tensor], extra: int) -> None:
    """Append `extra` zero positions to each cache buffer of `buffers` (the list is updated in place), one buffer at
    a time: only one old buffer is alive beside the new ones."""
    for index, buffer in enumerate(buffers):
        buffers[index] = append_zero_positions(buffer, extra)


def to_token_major(states: paddle.Tensor) -> paddle.Tensor:
    """Feature-major heads `[B, heads, d, L]` -> token-major `[B, heads, L, d]` (through `einsum`, whose transpose
    kernel is ~30x faster on CPU than Paddle's permute-then-copy)."""
    return paddle.einsum("bhdl->bhld", states)


class KVCache:
    """A left-padded batch's keys and values; `length` positions are filled, the same for every row.

    A layer's first `attend` stores the prompt (its batch and dtype become the buffers') and attends over exactly
    it; later steps write position `length` and attend over the whole capacity, the free positions hidden by the
    attention bias (see `key_length`; the CPU kernel reads only the filled ones). `advance` moves `length` once all
    layers have written.
    """

    def __init__(self, config: GOTConfig):
        self.num_layers = config.num_hidden_layers
        self.growth = GROWTH
        self.keys: List[Optional[paddle.Tensor]] = [None] * self.num_layers
        self.values: List[Optional[paddle.Tensor]] = [None] * self.num_layers
        self.capacity = 0
        self.length = 0

    def reserve(self, total_length: int) -> None:
        """Make room for `total_length` positions, and some more (`grown_capacity`)."""
        if total_length <= self.capacity:
            return
        capacity = grown_capacity(total_length, self.growth)
        if self.length > 0:
            grow_in_place(self.keys, capacity - self.capacity)
            grow_in_place(self.values, capacity - self.capacity)
        self.capacity = capacity

    def key_length(self, new_tokens: int) -> int:
        """How many key positions attention sees when `new_tokens` arrive: just them on an empty cache, else all."""
        return new_tokens if self.length == 0 else self.capacity

    def prepare(
        self,
        batch: int,
        new_tokens: int,
        attention_mask: Optional[paddle.Tensor],
        position_ids: Optional[paddle.Tensor],
        num_heads: int,
        dtype,
    ) -> Tuple[paddle.Tensor, Optional[paddle.Tensor]]:
        """`(position_ids [B, new_tokens], attention bias)` for `new_tokens` more tokens (see `build_attention_bias`).

        `attention_mask` `[B, length + new_tokens]` marks real tokens (left padding); positions restart at each
        row's first real token unless `position_ids` is given.
        """
        if position_ids is None and attention_mask is not None:
            position_ids = position_ids_from_mask(attention_mask, new_tokens)
        elif position_ids is None:
            position_ids = paddle.arange(self.length, self.length + new_tokens).unsqueeze(0).expand([batch, -1])
        self.reserve(self.length + new_tokens)
        bias = build_attention_bias(
            attention_mask, new_tokens, self.length, self.key_length(new_tokens), num_heads, dtype
        )
        return position_ids, bias

    def kernel_columns(self) -> Optional[KernelColumns]:
        """Where a one-token step's kernel writes and reads (every row at `length`), or None on an empty cache."""
        if self.length == 0:
            return None
        return self.keys, self.values, self.length, None

    def attend(
        self,
        layer: int,
        query: paddle.Tensor,
        keys: paddle.Tensor,
        values: paddle.Tensor,
        rotary: Rotary,
        attention_bias: Optional[paddle.Tensor],
    ) -> paddle.Tensor:
        """Layer `layer`: store the new keys/values (`[B, kv_heads, d, new]`, before rotary) and attend.

        Returns `[B, heads, d, new]`.
        """
        if decode_cpu.kernels_apply(query, keys):
            if self.length == 0:  # the kernel writes the prompt into zeroed buffers of the full capacity
                shape = [*keys.shape[:2], self.capacity, keys.shape[2]]
                self.keys[layer], self.values[layer] = paddle.zeros(shape, keys.dtype), paddle.zeros(shape, keys.dtype)
            attended = decode_cpu.cached_attention(
                query, keys, values, rotary, self.keys[layer], self.values[layer], self.length, attention_bias
            )
            if attended is not None:
                return attended
        query, keys = rotate_query_and_keys(query, keys, rotary)
        keys, values = self.update(layer, to_token_major(keys), to_token_major(values))
        return attend(query, *repeat_kv_heads(keys, values, query.shape[1]), attention_bias, token_major=True)

    def update(self, layer: int, keys: paddle.Tensor, values: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """Store rotated token-major `[B, kv_heads, new, d]` keys/values at `length`; return the `key_length`
        positions to attend over (token-major)."""
        new_tokens = keys.shape[2]
        if self.length == 0:
            self.keys[layer] = append_zero_positions(keys, self.capacity - new_tokens)
            self.values[layer] = append_zero_positions(values, self.capacity - new_tokens)
            return keys, values
        end = self.length + new_tokens
        self.keys[layer][:, :, self.length : end, :] = keys
        self.values[layer][:, :, self.length : end, :] = values
        return self.keys[layer], self.values[layer]

    def advance(self, new_tokens: int) -> None:
        """Mark `new_tokens` more positions as filled (called once after all layers ran)."""
        self.length += new_tokens

    def select_rows(self, rows: paddle.Tensor) -> None:
        """Keep only the batch rows `rows` (int64 `[n]`), e.g. once other sequences have finished."""
        self.keys = [paddle.index_select(keys, rows) for keys in self.keys]
        self.values = [paddle.index_select(values, rows) for values in self.values]


class RowCache:
    """Continuous batching's cache: up to `max_rows` sequences, each with its own length.

    Running rows occupy slots `0..rows-1` of `[max_rows, kv_heads, capacity, d]` buffers (allocated with the first
    row, in its dtype). A decode step gives every running row one token at its own position `lengths[row]`.
    """

    def __init__(self, config: GOTConfig, max_rows: int):
        self.num_layers = config.num_hidden_layers
        self.max_rows = max_rows
        self.growth = GROWTH
        self.keys: List[Optional[paddle.Tensor]] = [None] * self.num_layers
        self.values: List[Optional[paddle.Tensor]] = [None] * self.num_layers
        self.lengths = np.zeros(max_rows, dtype=np.int64)
        self.rows = 0
        self.capacity = 0
        self._positions: Optional[paddle.Tensor] = None
        self._bias: Optional[paddle.Tensor] = None

    def reserve(self, total_length: int) -> None:
        """Make room for rows of `total_length` positions, and some more (`grown_capacity`)."""
        if total_length <= self.capacity:
            return
        capacity = grown_capacity(total_length, self.growth)
        if self.keys[0] is not None:
            grow_in_place(self.keys, capacity - self.capacity)
            grow_in_place(self.values, capacity - self.capacity)
        self.capacity = capacity

    def add_row(self, prefilled: KVCache) -> int:
        """Copy a one-row prefilled `KVCache` into the next free slot; returns the slot (its row index)."""
        if self.rows == self.max_rows:
            raise RuntimeError("RowCache is full.")
        length = prefilled.length
        self.reserve(length + 1)
        if self.keys[0] is None:
            _, kv_heads, _, head_dim = prefilled.keys[0].shape
            shape = [self.max_rows, kv_heads, self.capacity, head_dim]
            self.keys = [paddle.zeros(shape, prefilled.keys[0].dtype) for _ in range(self.num_layers)]
            self.values = [paddle.zeros(shape, prefilled.keys[0].dtype) for _ in range(self.num_layers)]
        row = self.rows
        for layer in range(self.num_layers):
            self.keys[layer][row, :, :length, :] = prefilled.keys[layer][0, :, :length, :]
            self.values[layer][row, :, :length, :] = prefilled.values[layer][0, :, :length, :]
        self.lengths[row] = length
        self.rows += 1
        return row

    def remove_row(self, row: int) -> Optional[int]:
        """Free row `row`; the last running row moves into its slot. Returns the row that moved there (its old
        index), or None when `row` was the last."""
        last = self.rows - 1
        self.rows -= 1
        if row == last:
            return None
        length = int(self.lengths[last])
        for layer in range(self.num_layers):
            self.keys[layer][row, :, :length, :] = self.keys[layer][last, :, :length, :]
            self.values[layer][row, :, :length, :] = self.values[layer][last, :, :length, :]
        self.lengths[row] = length
        return last

    def prepare(
        self, batch: int, new_tokens: int, attention_mask, position_ids, num_heads: int, dtype
    ) -> Tuple[paddle.Tensor, Optional[paddle.Tensor]]:
        """Positions `[rows, 1]` (each row's length) for one new token per running row; no shared bias."""
        if new_tokens != 1 or batch != self.rows or attention_mask is not None or position_ids is not None:
            raise ValueError("A RowCache step takes exactly one new token per running row, unpadded.")
        lengths = self.lengths[: self.rows]
        self.reserve(int(lengths.max()) + 1)
        self._positions = paddle.to_tensor(lengths)
        self._bias = None
        return self._positions.unsqueeze(1), None

    def kernel_columns(self) -> Optional[KernelColumns]:
        """Where a one-token step's kernel writes and reads: each running row at its own length."""
        return self.keys, self.values, 0, self._positions

    def attend(
        self,
        layer: int,
        query: paddle.Tensor,
        keys: paddle.Tensor,
        values: paddle.Tensor,
        rotary: Rotary,
        attention_bias: Optional[paddle.Tensor],
    ) -> paddle.Tensor:
        """Layer `layer`: write each row's new key/value at its own position and attend over its filled positions."""
        attended = decode_cpu.cached_attention(
            query, keys, values, rotary, self.keys[layer], self.values[layer], 0, None, positions=self._positions
        )
        if attended is not None:
            return attended
        query, keys = rotate_query_and_keys(query, keys, rotary)
        for row, position in enumerate(self.lengths[: self.rows].tolist()):
            self.keys[layer][row, :, position, :] = keys[row, :, :, 0]
            self.values[layer][row, :, position, :] = values[row, :, :, 0]
        if self._bias is None:
            columns = paddle.arange(self.capacity).unsqueeze(0)
            allowed = (columns <= self._positions.unsqueeze(1)).unsqueeze(1).unsqueeze(1)  # [rows, 1, 1, capacity]
            self._bias = broadcastable_to_heads(additive_mask(allowed, query.dtype), query.shape[1])
        cached_keys, cached_values = self.keys[layer][: self.rows], self.values[layer][: self.rows]
        return attend(query, *repeat_kv_heads(cached_keys, cached_values, query.shape[1]), self._bias, token_major=True)

    def advance(self, new_tokens: int) -> None:
        """Every running row has one more filled position."""
        self.lengths[: self.rows] += new_tokens
