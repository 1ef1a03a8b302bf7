"""The GOT vision encoder: SAM/ViTDet-B (`vision_tower_high`) with `net_2`/`net_3` (docs/design.md §1).

Parameter names follow the original GOT checkpoint (`patch_embed.proj`, `blocks.N.attn.qkv`, `neck.0..3`,
`net_2`, `net_3`) so that its weights and PaddleMIX's load by name. Feature maps inside the blocks are kept
channels-last, `[tiles, height, width, channels]`, as in Meta's `image_encoder.py`.
"""

import math
from typing import Tuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.distributed.fleet.utils import recompute

from ..config import GOTVisionConfig
from ..kernels import decode_cpu
from .feature_major import linear_from_feature_major, linear_to_feature_major


def pad_bottom_right(hidden_states: paddle.Tensor, pad_h: int, pad_w: int) -> paddle.Tensor:
    """`[B, H, W, C]` with `pad_h` zero rows below and `pad_w` zero columns to the right: `[B, H + pad_h, W + pad_w,
    C]`. Zeros are concatenated (an NHWC `F.pad` makes Paddle Inference's oneDNN predictor fail)."""
    batch, height, width, channels = hidden_states.shape
    if pad_w:
        right = paddle.zeros([batch, height, pad_w, channels], hidden_states.dtype)
        hidden_states = paddle.concat([hidden_states, right], axis=2)
    if pad_h:
        below = paddle.zeros([batch, pad_h, width + pad_w, channels], hidden_states.dtype)
        hidden_states = paddle.concat([hidden_states, below], axis=1)
    return hidden_states


def window_partition(hidden_states: paddle.Tensor, window_size: int) -> Tuple[paddle.Tensor, Tuple[int, int]]:
    """Zero-pad `[B, H, W, C]` bottom/right to multiples of `window_size` and cut it into windows.

    Returns `[B * num_windows, window_size, window_size, C]` and the padded `(height, width)`. The axes are
    permuted with `einsum`, which uses Paddle's transpose kernel (`transpose` + copy takes a path ~30x slower).
    """
    batch, height, width, channels = hidden_states.shape
    pad_h = (window_size - height % window_size) % window_size
    pad_w = (window_size - width % window_size) % window_size
    if pad_h or pad_w:
        hidden_states = pad_bottom_right(hidden_states, pad_h, pad_w)
    padded_h, padded_w = height + pad_h, width + pad_w
    grid = hidden_states.reshape(
        [batch, padded_h // window_size, window_size, padded_w // window_size, window_size, channels]
    )
    windows = paddle.einsum("brykxc->brkyxc", grid)  # rows of windows, columns of windows, in-window y, x
    return windows.reshape([-1, window_size, window_size, channels]), (padded_h, padded_w)


def window_unpartition(
    windows: paddle.Tensor, window_size: int, padded_size: Tuple[int, int], original_size: Tuple[int, int]
) -> paddle.Tensor:
    """Stitch `[B * num_windows, ws, ws, C]` windows back into `[B, H, W, C]`, cropping the padding away."""
    padded_h, padded_w = padded_size
    height, width = original_size
    rows, cols = padded_h // window_size, padded_w // window_size
    batch = windows.shape[0] // (rows * cols)
    grid = windows.reshape([batch, rows, cols, window_size, window_size, -1])
    hidden_states = paddle.einsum("brkyxc->brykxc", grid).reshape([batch, padded_h, padded_w, -1])
    if padded_h != height or padded_w != width:
        hidden_states = hidden_states[:, :height, :width, :]
    return hidden_states


def get_rel_pos(size: int, rel_pos: paddle.Tensor) -> paddle.Tensor:
    """Relative position embeddings for a `size`-long axis attending to itself.

    `rel_pos` is the learned table `[2 * size - 1, head_dim]`; returns `R[size, size, head_dim]` with
    `R[i, j] = rel_pos[i - j + size - 1]`.
    """
    coords = paddle.arange(size)
    relative = coords.unsqueeze(1) - coords.unsqueeze(0) + (size - 1)
    return paddle.index_select(rel_pos, relative.flatten()).reshape([size, size, -1])


def decomposed_rel_pos(query: paddle.Tensor, table_h: paddle.Tensor, table_w: paddle.Tensor) -> paddle.Tensor:
    """MViTv2's relative-position terms from the UNSCALED feature-major query `[N, heads, head_dim, H*W]` of an
    `[H, W]` map and the gathered tables `R_h` `[H, H, head_dim]`, `R_w` `[W, W, head_dim]` (`get_rel_pos`).

    Returns `[N, heads, H + W, H*W]`: for each query (last axis), first its term for every key row
    (`rel_h[q, ky] = q . R_h[qy, ky]`), then for every key column (`rel_w[q, kx] = q . R_w[qx, kx]`).
    """
    batch, num_heads, head_dim, _ = query.shape
    height, width = table_h.shape[0], table_w.shape[0]
    grid_query = query.reshape([batch, num_heads, head_dim, height, width])
    rel_h = paddle.einsum("nhcyx,ykc->nhkyx", grid_query, table_h)  # [N, heads, Hk, H, W]
    rel_w = paddle.einsum("nhcyx,xkc->nhkyx", grid_query, table_w)  # [N, heads, Wk, H, W]
    return paddle.concat([rel_h, rel_w], axis=2).reshape([batch, num_heads, height + width, height * width])


def key_grid_indicators(height: int, width: int, dtype) -> paddle.Tensor:
    """`[H + W, H*W]`: for each key (last axis), a one in the row of its grid row and in the row of its column.

    Appended to the keys (and `decomposed_rel_pos` to the queries), one matmul yields
    `q.k * scale + rel_h[q, ky] + rel_w[q, kx]`, the reference's scores plus bias, without materialising the bias.
    """
    rows = paddle.arange(height).unsqueeze(1) == paddle.arange(height * width).unsqueeze(0) // width
    cols = paddle.arange(width).unsqueeze(1) == paddle.arange(height * width).unsqueeze(0) % width
    return paddle.concat([rows, cols], axis=0).astype(dtype)


def attention_in_query_blocks(
    query: paddle.Tensor, keys: paddle.Tensor, values: paddle.Tensor, max_block_bytes: int
) -> paddle.Tensor:
    """Softmax attention on feature-major heads, a block of queries at a time (bounded score memory).

    `query` `[N, heads, e, L]` (already scaled), `keys` `[N, heads, e, K]`, `values` `[N, heads, d, K]`;
    returns `[N, heads, d, L]`. Each block's scores `[N, heads, block, K]` stay within `max_block_bytes`.
    """
    batch, num_heads, _, length = query.shape
    key_length = keys.shape[-1]
    bytes_per_query = batch * num_heads * key_length * 4
    block = max(1, min(length, max_block_bytes // bytes_per_query))
    outputs = []
    for start in range(0, length, block):
        scores = paddle.matmul(query[..., start : start + block], keys, transpose_x=True)  # [N, heads, b, K]
        probabilities = F.softmax_(scores.astype("float32"), axis=-1).astype(values.dtype)  # in place: 20% faster
        outputs.append(paddle.matmul(values, probabilities, transpose_y=True))  # [N, heads, d, b]
    return outputs[0] if len(outputs) == 1 else paddle.concat(outputs, axis=-1)


class VisionAttention(nn.Layer):
    """Multi-head self-attention over a `[N, H, W, C]` map with decomposed relative positions.

    Heads are feature-major, `[N, heads, head_dim, H*W]` (see `feature_major`). In CPU inference our kernel attends
    (`decode_cpu.vision_attention`: the relative terms taken and added to each score row in cache); elsewhere the
    relative-position bias enters the score matmul as extra features (see `key_grid_indicators`), a block of queries
    at a time.
    """

    SCORE_BLOCK_BYTES = 32 * 1024 * 1024

    def __init__(self, config: GOTVisionConfig, input_size: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        zeros = nn.initializer.Constant(0.0)
        self.rel_pos_h = self.create_parameter([2 * input_size - 1, self.head_dim], default_initializer=zeros)
        self.rel_pos_w = self.create_parameter([2 * input_size - 1, self.head_dim], default_initializer=zeros)

    def forward(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        """`[N, H, W, C]` -> `[N, H, W, C]`."""
        batch, height, width, channels = hidden_states.shape
        tokens = hidden_states.reshape([batch, height * width, channels])
        qkv = linear_to_feature_major(self.qkv, tokens)  # [N, 3C, L]
        qkv = qkv.reshape([batch, 3, self.num_heads, self.head_dim, -1])
        # Slices, not unbind: in an export unbind becomes a split that oneDNN's bfloat16 placement does not take, and
        # the value products behind it stayed float32 (with ~7 GB of bfloat16 -> float32 copies a 1024 px tile).
        query, keys, values = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # each [N, heads, d, L]
        table_h = get_rel_pos(height, self.rel_pos_h)  # [H, H, d]
        table_w = get_rel_pos(width, self.rel_pos_w)  # [W, W, d]
        attended = decode_cpu.vision_attention(qkv, table_h, table_w)
        if attended is None:
            relative = decomposed_rel_pos(query, table_h, table_w)
            attended = self.attend_with_indicators(query, keys, values, relative, height, width)
        output = linear_from_feature_major(self.proj, attended.reshape([batch, channels, -1]))  # [N, L, C]
        return output.reshape([batch, height, width, channels])

    def attend_with_indicators(self, query, keys, values, relative, height: int, width: int) -> paddle.Tensor:
        """Paddle's ops: the relative terms join the score matmul as extra features; `[N, heads, d, L]`."""
        batch = query.shape[0]
        indicators = key_grid_indicators(height, width, keys.dtype)
        query = paddle.concat([query * (1.0 / math.sqrt(self.head_dim)), relative], axis=2)
        keys = paddle.concat([keys, indicators.expand([batch, self.num_heads] + indicators.shape)], axis=2)
        return attention_in_query_blocks(query, keys, values, self.SCORE_BLOCK_BYTES)


class VisionMLP(nn.Layer):
    """`lin1` -> exact GELU -> `lin2`."""

    def __init__(self, config: GOTVisionConfig):
        super().__init__()
        self.lin1 = nn.Linear(config.hidden_size, config.mlp_dim)
        self.lin2 = nn.Linear(config.mlp_dim, config.hidden_size)

    def forward(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        hidden_states = F.gelu(decode_cpu.linear(self.lin1, hidden_states), approximate=False)
        return decode_cpu.linear(self.lin2, hidden_states)


class VisionBlock(nn.Layer):
    """Pre-norm transformer block; windowed attention when `window_size > 0`, global otherwise."""

    def __init__(self, config: GOTVisionConfig, window_size: int):
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)
        self.attn = VisionAttention(config, window_size if window_size > 0 else config.grid_size)
        self.norm2 = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)
        self.mlp = VisionMLP(config)

    def forward(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        """`[N, H, W, C]` -> `[N, H, W, C]`."""
        normed = self.norm1(hidden_states)
        if self.window_size > 0:
            height, width = normed.shape[1], normed.shape[2]
            windows, padded_size = window_partition(normed, self.window_size)
            attended = window_unpartition(self.attn(windows), self.window_size, padded_size, (height, width))
        else:
            attended = self.attn(normed)
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.norm2(hidden_states))


class LayerNorm2d(nn.Layer):
    """LayerNorm over the channel axis of a `[N, C, H, W]` map (statistics in float32)."""

    def __init__(self, num_channels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = self.create_parameter([num_channels], default_initializer=nn.initializer.Constant(1.0))
        self.bias = self.create_parameter([num_channels], default_initializer=nn.initializer.Constant(0.0))

    def forward(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.astype("float32")
        mean = hidden_states.mean(axis=1, keepdim=True)
        variance = paddle.square(hidden_states - mean).mean(axis=1, keepdim=True)
        hidden_states = ((hidden_states - mean) / paddle.sqrt(variance + self.eps)).astype(input_dtype)
        return self.weight.reshape([1, -1, 1, 1]) * hidden_states + self.bias.reshape([1, -1, 1, 1])


class PatchEmbed(nn.Layer):
    """Non-overlapping patch convolution: `[N, 3, S, S]` -> channels-last `[N, S/p, S/p, C]`."""

    def __init__(self, config: GOTVisionConfig):
        super().__init__()
        self.proj = nn.Conv2D(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        return paddle.einsum("nchw->nhwc", self.proj(pixel_values))


class GOTVisionEncoder(nn.Layer):
    """Tiles `[T, 3, S, S]` -> features `[T, tokens_per_tile, output_dim]` (before the projector).

    `output_dim` is the decoder width: `net_3` maps 2 * output_channels to it (1024 in the released model).
    """

    def __init__(self, config: GOTVisionConfig, output_dim: int):
        super().__init__()
        self.config = config
        grid = config.grid_size
        self.patch_embed = PatchEmbed(config)
        self.pos_embed = self.create_parameter(
            [1, grid, grid, config.hidden_size], default_initializer=nn.initializer.Constant(0.0)
        )
        self.blocks = nn.LayerList(
            [
                VisionBlock(config, 0 if index in config.global_attn_indexes else config.window_size)
                for index in range(config.num_hidden_layers)
            ]
        )
        channels = config.output_channels
        self.neck = nn.Sequential(
            nn.Conv2D(config.hidden_size, channels, kernel_size=1, bias_attr=False),
            LayerNorm2d(channels, config.layer_norm_eps),
            nn.Conv2D(channels, channels, kernel_size=3, padding=1, bias_attr=False),
            LayerNorm2d(channels, config.layer_norm_eps),
        )
        self.net_2 = nn.Conv2D(channels, 2 * channels, kernel_size=3, stride=2, padding=1, bias_attr=False)
        self.net_3 = nn.Conv2D(2 * channels, output_dim, kernel_size=3, stride=2, padding=1, bias_attr=False)
        # Recompute each block's activations in backward instead of storing them (training memory).
        self.gradient_checkpointing = False

    def forward(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        """`[T, 3, S, S]` -> `[T, tokens_per_tile, output_dim]`, tokens in row-major order."""
        hidden_states = self.patch_embed(pixel_values) + self.pos_embed
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                hidden_states = recompute(block, hidden_states)
            else:
                hidden_states = block(hidden_states)
        feature_map = self.neck(paddle.einsum("nhwc->nchw", hidden_states))
        feature_map = self.net_3(self.net_2(feature_map))  # [T, output_dim, s, s]
        return feature_map.flatten(start_axis=2).transpose([0, 2, 1])
