"""Our CPU decode kernels: products and attention against float64 numpy, a whole cached decode against the reference,
and the fallbacks (gradients, many rows, no compiler)."""

import functools
import logging
import math
import platform
import shutil
from collections import Counter

import numpy as np
import paddle
import pytest

import reference
from reference import SHAPES, TinyShape

from paddle_got import GOTQwenForCausalLM, device
from paddle_got.kernels import decode_cpu
from paddle_got.modeling.attention import broadcastable_to_heads, build_attention_bias, position_ids_from_mask
from paddle_got.modeling.kv_cache import KVCache
from paddle_got.modeling.qwen2 import Qwen2DecoderLayer, RotaryEmbedding


def can_build_here() -> bool:
    """Linux x86-64 with AVX2 + FMA and a C++ compiler: where the kernels must build (CI's machines are)."""
    if platform.system() != "Linux" or platform.machine() != "x86_64" or shutil.which("c++") is None:
        return False
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        flags = cpuinfo.read()
    return " avx2" in flags and " fma" in flags


pytestmark = pytest.mark.skipif(not can_build_here(), reason="needs Linux x86-64 with AVX2 + FMA and a C++ compiler")


class CountingLibrary:
    """The kernel library, counting calls per function."""

    def __init__(self, library):
        self.library = library
        self.calls = Counter()

    def __getattr__(self, name):
        function = getattr(self.library, name)

        def counted(*args):
            self.calls[name] += 1
            return function(*args)

        return counted


@pytest.fixture
def counting_library(monkeypatch):
    """Route the model's kernel calls through a `CountingLibrary`."""
    library = CountingLibrary(decode_cpu.load_library())
    monkeypatch.setattr(decode_cpu, "load_library", lambda: library)
    return library


@pytest.fixture
def logged(monkeypatch, caplog):
    """caplog, seeing the package logger (even after a tool stopped it propagating to the root logger)."""
    monkeypatch.setattr(decode_cpu.logger, "propagate", True)
    caplog.set_level(logging.INFO, logger=decode_cpu.logger.name)
    return caplog


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """Run with one and with two CPU threads (the kernels split work differently)."""
    device.set_cpu_threads(request.param)
    yield request.param
    device.set_cpu_threads()


@pytest.fixture(params=[False, True], ids=["avx2_tiles", "avx512_tiles"])
def wide_tiles(request):
    """Run the attention kernels and the products of a few rows on 16-wide AVX2 tiles and on 32-wide AVX-512 tiles
    (where the CPU has AVX-512)."""
    library = decode_cpu.load_library()
    if library.use_wide_tiles(int(request.param)) != request.param:
        pytest.skip("this CPU has no AVX-512")
    yield request.param
    library.use_wide_tiles(1)


@pytest.fixture(params=[False, True], ids=["avx2_products", "avx512_products"])
def wide_products(request):
    """Run a few rows' products, on float32 and on bfloat16 weights, on AVX2 and on AVX-512 (where the CPU has it),
    whatever this CPU would choose; afterwards its own choice again."""
    library = decode_cpu.load_library()
    if not library.use_wide_products(int(request.param), int(request.param)) and request.param:
        pytest.skip("this CPU has no AVX-512")
    yield request.param
    library.use_wide_tiles(1)


def random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8])
# Weight rows shorter and longer than 4 KB (kLongRowBytes: read one or eight at a time), and every kind of remainder.
@pytest.mark.parametrize("in_features,out_features", [(64, 300), (37, 45), (130, 1003), (130, 2100), (5, 3)])
@pytest.mark.parametrize("weight_is_out_by_in", [False, True], ids=["in_by_out", "out_by_in"])
def test_matmul_equals_float64_numpy(
    rows, in_features, out_features, weight_is_out_by_in, threads, counting_library, wide_products
):
    """`[B, 1, in] @ W + bias` for both weight layouts, column/row counts that leave every kind of remainder, on AVX2
    and AVX-512 panels."""
    x = random((rows, 1, in_features), 0)
    weight = random((in_features, out_features), 1)
    bias = random((out_features,), 2)
    stored = np.ascontiguousarray(weight.T) if weight_is_out_by_in else weight
    with paddle.no_grad():
        ours = decode_cpu.matmul(
            paddle.to_tensor(x),
            paddle.to_tensor(stored),
            paddle.to_tensor(bias),
            weight_is_out_by_in=weight_is_out_by_in,
        )
    expected = x.astype("float64") @ weight.astype("float64") + bias
    assert ours.shape == [rows, 1, out_features]
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5, atol=1e-5 * np.sqrt(in_features))
    assert counting_library.calls["skinny_matmul"] == 1


def declared_fields(struct_name):
    """The fields of the C++ struct `struct_name` in decode_cpu.cpp as ctypes would declare them: pointers as void
    pointers (a pointer to a struct as a pointer to its ctypes class), int64_t as c_int64, float as c_float, a
    struct member as its ctypes class."""
    import ctypes
    import re

    source = decode_cpu.SOURCE.read_text()
    body = re.search(rf"struct {struct_name} \{{(.*?)\n\}};", source, re.S).group(1)
    declared = re.findall(r"^\s*(?:const )?(\w+)(\*?) ([\w, ]+);", body, re.M)  # `int64_t a, b;` declares two
    scalars = {"int64_t": ctypes.c_int64, "float": ctypes.c_float}
    structs = {name: getattr(decode_cpu, name) for name in ("CachedAttentionArgs", "DecodeLayerTensors")}
    kinds = []
    for type_name, pointer, names in declared:
        if pointer:
            kind = ctypes.POINTER(structs[type_name]) if type_name in structs else ctypes.c_void_p
        else:
            kind = structs.get(type_name) or scalars[type_name]
        kinds += [(name, kind) for name in names.split(", ")]
    return kinds


@pytest.mark.parametrize(
    "struct_name,field_count",
    [("CachedAttentionArgs", 22), ("DecodeLayerTensors", 14), ("DecodeLayersArgs", 9), ("VisionAttentionArgs", 9)],
)
def test_the_argument_structs_match_the_cpp_ones(struct_name, field_count):
    """The kernels' argument structs are declared twice (ctypes and C++): the same fields, in the same order, of
    matching kinds."""
    declared = declared_fields(struct_name)
    assert len(declared) == field_count and declared == list(getattr(decode_cpu, struct_name)._fields_)


def test_the_kernels_build_and_load_here():
    """Where they can build, they do (a broken build must not hide behind the fallback)."""
    assert decode_cpu.load_library() is not None


def test_few_row_products_take_avx512_where_it_was_measured_faster():
    """On loading: float32 weights' products on AVX-512 where the CPU has it but not AMX (the Zen 4 EPYC), bfloat16
    weights' where it has AMX (the Xeon), neither without AVX-512."""
    library = decode_cpu.load_library()
    library.use_wide_tiles(1)
    flags = device.cpu_flags()
    avx512, amx = "avx512f" in flags, "amx_tile" in flags
    assert library.products_are_wide(0) == int(avx512 and not amx)
    assert library.products_are_wide(1) == int(avx512 and amx)


def test_matmul_leaves_training_and_many_rows_to_paddle(counting_library):
    """With gradients enabled, or beyond MAX_ROWS rows, Paddle's matmul runs (and gradients flow)."""
    weight = paddle.to_tensor(random((16, 24), 1), stop_gradient=False)
    decode_cpu.matmul(paddle.to_tensor(random((1, 16), 0)), weight).sum().backward()
    assert weight.grad is not None
    with paddle.no_grad():
        many = decode_cpu.matmul(paddle.to_tensor(random((decode_cpu.MAX_ROWS + 1, 16), 0)), weight)
    assert many.shape == [decode_cpu.MAX_ROWS + 1, 24]
    assert counting_library.calls["skinny_matmul"] == 0


def token_major_buffer(feature_major):
    """A cache buffer `[rows, kv_heads, capacity, d]` (token-major, as the caches hold it) with the contents of the
    numpy `[rows, kv_heads, d, capacity]` (feature-major, as the tests below index it)."""
    return paddle.to_tensor(np.ascontiguousarray(feature_major.transpose(0, 1, 3, 2)))


def feature_major_view(buffer):
    """A token-major cache buffer's contents as numpy `[rows, kv_heads, d, capacity]`."""
    return buffer.numpy().transpose(0, 1, 3, 2)


def rotated(states, positions, theta):
    """Rotary embedding in float64 numpy: `states` `[B, heads, d]` at `positions` `[B]`."""
    half = states.shape[-1] // 2
    inverse_frequencies = 1.0 / theta ** (np.arange(0, 2 * half, 2) / (2 * half))
    angles = np.concatenate([positions[:, None] * inverse_frequencies] * 2, axis=-1)[:, None, :]
    turned = np.concatenate([-states[..., half:], states[..., :half]], axis=-1)
    return states * np.cos(angles) + turned * np.sin(angles)


# head_dim 16, 20 and 64: value rows of two vectors, of two and a remainder, of the eight one pass takes (GOT's).
@pytest.mark.parametrize(
    "batch,heads,kv_heads,padded,head_dim", [(1, 4, 4, False, 16), (3, 4, 2, True, 20), (2, 16, 16, True, 64)]
)
def test_decode_attention_step_equals_float64_numpy(batch, heads, kv_heads, padded, head_dim, threads):
    """Rotary on the new query and key, the key and value written into the cache's next column, attention over the
    filled columns only (the free ones hold NaN and huge values), grouped KV heads and left padding."""
    capacity, position, theta = 40, 28, 1e4
    query, new_keys, new_values = (
        random((batch, count, head_dim, 1), seed) for count, seed in ((heads, 0), (kv_heads, 1), (kv_heads, 2))
    )
    keys, values = random((batch, kv_heads, head_dim, capacity), 3), random((batch, kv_heads, head_dim, capacity), 4)
    keys[..., position:], values[..., position:] = 1e30, np.nan
    mask = np.ones((batch, position + 1), dtype="int64")
    if padded:
        mask[1, :6] = 0
    positions = position_ids_from_mask(paddle.to_tensor(mask), 1)
    tables = RotaryEmbedding(head_dim, theta)(positions, "float32")
    rotary = tuple(tuple(broadcastable_to_heads(table, count) for table in tables) for count in (heads, kv_heads))
    bias = build_attention_bias(paddle.to_tensor(mask), 1, position, capacity, heads, "float32")
    key_buffer, value_buffer = token_major_buffer(keys), token_major_buffer(values)
    with paddle.no_grad():
        new_token = [paddle.to_tensor(array) for array in (query, new_keys, new_values)]
        ours = decode_cpu.cached_attention(*new_token, rotary, key_buffer, value_buffer, position, bias).numpy()

    token_positions = positions.numpy()[:, 0].astype("float64")
    rotated_keys = rotated(new_keys[..., 0].astype("float64"), token_positions, theta)
    np.testing.assert_allclose(feature_major_view(key_buffer)[..., position], rotated_keys, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(feature_major_view(value_buffer)[..., position], new_values[..., 0])
    np.testing.assert_array_equal(feature_major_view(key_buffer)[..., position + 1 :], keys[..., position + 1 :])
    keys[..., position], values[..., position] = rotated_keys, new_values[..., 0]
    rotated_queries = rotated(query[..., 0].astype("float64"), token_positions, theta)
    group = heads // kv_heads
    expected = np.zeros((batch, heads, head_dim, 1))
    for b in range(batch):
        visible = mask[b].astype(bool)
        for h in range(heads):
            key = keys[b, h // group, :, : position + 1][:, visible].astype("float64")
            value = values[b, h // group, :, : position + 1][:, visible].astype("float64")
            scores = rotated_queries[b, h] @ key / np.sqrt(head_dim)
            probabilities = np.exp(scores - scores.max())
            expected[b, h, :, 0] = value @ (probabilities / probabilities.sum())
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_decode_attention_with_a_position_per_row_equals_float64_numpy(heads, kv_heads, threads):
    """Continuous batching: each row writes and attends at its own position, in a buffer with more slots than rows
    (the spare slot and every row's free columns hold NaN and huge values and must stay untouched)."""
    batch, slots, head_dim, capacity, theta = 3, 4, 16, 40, 1e4
    row_positions = np.array([5, 31, 17], dtype="int64")
    query, new_keys, new_values = (
        random((batch, count, head_dim, 1), seed) for count, seed in ((heads, 10), (kv_heads, 11), (kv_heads, 12))
    )
    keys, values = random((slots, kv_heads, head_dim, capacity), 13), random((slots, kv_heads, head_dim, capacity), 14)
    for row, position in enumerate(row_positions):
        keys[row, ..., position:], values[row, ..., position:] = 1e30, np.nan
    keys[batch:], values[batch:] = np.nan, 1e30
    tables = RotaryEmbedding(head_dim, theta)(paddle.to_tensor(row_positions[:, None]), "float32")
    rotary = tuple(tuple(broadcastable_to_heads(table, count) for table in tables) for count in (heads, kv_heads))
    key_buffer, value_buffer = token_major_buffer(keys), token_major_buffer(values)
    with paddle.no_grad():
        new_token = [paddle.to_tensor(array) for array in (query, new_keys, new_values)]
        positions = paddle.to_tensor(row_positions)
        ours = decode_cpu.cached_attention(*new_token, rotary, key_buffer, value_buffer, 0, None, positions).numpy()
    written_keys, written_values = feature_major_view(key_buffer), feature_major_view(value_buffer)
    rotated_keys = rotated(new_keys[..., 0].astype("float64"), row_positions.astype("float64"), theta)
    rotated_queries = rotated(query[..., 0].astype("float64"), row_positions.astype("float64"), theta)
    group = heads // kv_heads
    for row, position in enumerate(row_positions):
        np.testing.assert_allclose(written_keys[row, ..., position], rotated_keys[row], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(written_values[row, ..., position], new_values[row, ..., 0])
        np.testing.assert_array_equal(written_keys[row, ..., position + 1 :], keys[row, ..., position + 1 :])
        keys[row, ..., position], values[row, ..., position] = rotated_keys[row], new_values[row, ..., 0]
        for h in range(heads):
            key = keys[row, h // group, :, : position + 1].astype("float64")
            value = values[row, h // group, :, : position + 1].astype("float64")
            scores = rotated_queries[row, h] @ key / np.sqrt(head_dim)
            probabilities = np.exp(scores - scores.max())
            np.testing.assert_allclose(
                ours[row, h, :, 0], value @ (probabilities / probabilities.sum()), rtol=1e-5, atol=1e-6
            )
    assert np.isnan(written_keys[batch:]).all() and (written_values[batch:] == 1e30).all()


@pytest.mark.parametrize(
    "batch,heads,kv_heads,new_tokens,position,padded,head_dim",
    [
        (1, 4, 4, 9, 0, False, 16),
        (3, 4, 2, 11, 0, True, 20),
        (2, 4, 2, 5, 0, False, 64),
        (2, 4, 4, 3, 20, True, 72),
        (2, 4, 2, 53, 0, True, 64),  # several tasks of 24 queries, several tiles of 16 keys
        (1, 2, 1, 30, 20, False, 24),
    ],
    ids=["prompt", "padded_prompt_gqa", "batch_gqa", "continuation", "long_padded_prompt", "long_continuation"],
)
def test_cached_attention_over_several_new_tokens_equals_float64_numpy(
    batch, heads, kv_heads, new_tokens, position, padded, head_dim, threads, wide_tiles
):
    """A prefill (an empty cache, causal or with a padding bias) and a several-token continuation of a filled cache:
    every new key and value written at its column, each real query attending over the columns up to its own (the
    free columns hold NaN and huge values), and a fully masked padding query averaging every filled column's values,
    as the Paddle path gives it."""
    theta, filled = 1e4, position + new_tokens
    capacity = filled + 7
    query, new_keys, new_values = (
        random((batch, count, head_dim, new_tokens), seed)
        for count, seed in ((heads, 20), (kv_heads, 21), (kv_heads, 22))
    )
    keys, values = random((batch, kv_heads, head_dim, capacity), 23), random((batch, kv_heads, head_dim, capacity), 24)
    keys[..., position:], values[..., position:] = 1e30, np.nan
    mask = np.ones((batch, filled), dtype="int64")
    if padded:
        mask[1, :4] = 0
    positions = position_ids_from_mask(paddle.to_tensor(mask), new_tokens)
    tables = RotaryEmbedding(head_dim, theta)(positions, "float32")
    rotary = tuple(tuple(broadcastable_to_heads(table, count) for table in tables) for count in (heads, kv_heads))
    key_length = new_tokens if position == 0 else capacity
    bias = build_attention_bias(paddle.to_tensor(mask), new_tokens, position, key_length, heads, "float32")
    assert (bias is None) == (not padded and position == 0)
    key_buffer, value_buffer = token_major_buffer(keys), token_major_buffer(values)
    with paddle.no_grad():
        new = [paddle.to_tensor(array) for array in (query, new_keys, new_values)]
        ours = decode_cpu.cached_attention(*new, rotary, key_buffer, value_buffer, position, bias).numpy()

    token_positions = positions.numpy().astype("float64")  # [B, new_tokens]
    columns = slice(position, filled)
    rotated_keys = np.stack(
        [rotated(new_keys[..., t].astype("float64"), token_positions[:, t], theta) for t in range(new_tokens)], -1
    )
    # float32 rotary tables: angles up to ~50 radians carry ~5e-6 of rounding
    np.testing.assert_allclose(feature_major_view(key_buffer)[..., columns], rotated_keys, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(feature_major_view(value_buffer)[..., columns], new_values)
    np.testing.assert_array_equal(feature_major_view(key_buffer)[..., filled:], keys[..., filled:])
    keys[..., columns], values[..., columns] = rotated_keys, new_values
    group = heads // kv_heads
    for t in range(new_tokens):
        rotated_queries = rotated(query[..., t].astype("float64"), token_positions[:, t], theta)
        for b in range(batch):
            visible = mask[b, : position + t + 1].astype(bool)
            for h in range(heads):
                key = keys[b, h // group, :, :filled].astype("float64")
                value = values[b, h // group, :, :filled].astype("float64")
                if visible.any():
                    scores = rotated_queries[b, h] @ key[:, : position + t + 1][:, visible] / np.sqrt(head_dim)
                    probabilities = np.exp(scores - scores.max())
                    expected = value[:, : position + t + 1][:, visible] @ (probabilities / probabilities.sum())
                else:
                    expected = value.mean(axis=1)
                np.testing.assert_allclose(ours[b, h, :, t], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "batch,heads,head_dim,height,width",
    [(2, 3, 20, 5, 7), (1, 2, 32, 8, 8), (3, 1, 16, 3, 3), (1, 2, 64, 13, 11), (1, 2, 18, 6, 70)],
    ids=["odd_sizes", "whole_tiles", "one_partial_tile", "several_tasks", "features_left_by_the_split_sums"],
)
def test_vision_attention_equals_float64_numpy(batch, heads, head_dim, height, width, threads, wide_tiles):
    """softmax(q . k / sqrt(d) + q . R_h[qy, ky] + q . R_w[qx, kx]) . v per head, for maps whose token count, head
    size and sides leave every kind of remainder (the 16-key tiles, the 6-query register tiles, the 24-query tasks,
    the relative tables' 8-key vectors)."""
    tokens = height * width
    qkv = random((batch, 3, heads, head_dim, tokens), 30)
    # Scaled so that each relative term is ~3 at one standard deviation.
    scale = 3 / np.sqrt(head_dim)
    table_h, table_w = random((height, height, head_dim), 31) * scale, random((width, width, head_dim), 32) * scale
    with paddle.no_grad():
        tables = paddle.to_tensor(table_h), paddle.to_tensor(table_w)
        ours = decode_cpu.vision_attention(paddle.to_tensor(qkv), *tables).numpy()
    query, keys, values = (qkv[:, i].astype("float64") for i in range(3))
    token_rows, token_columns = np.divmod(np.arange(tokens), width)
    rel_h = np.einsum("bhdq,qkd->bhqk", query, table_h[token_rows].astype("float64"))  # [B, heads, query, key row]
    rel_w = np.einsum("bhdq,qkd->bhqk", query, table_w[token_columns].astype("float64"))
    bias = rel_h[..., token_rows] + rel_w[..., token_columns]  # [B, heads, query, key]: its key's row and column
    scores = np.einsum("bhdq,bhdk->bhqk", query, keys) / np.sqrt(head_dim) + bias
    probabilities = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    expected = np.einsum("bhqk,bhdk->bhdq", probabilities, values)
    # The same computation in float32 numpy is up to 2.7e-6 off float64 here (scores ~10 at the extremes).
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=5e-6)


@pytest.mark.parametrize("rows", [1, 3, 8, 300])
def test_rms_norm_equals_float64_numpy(rows, threads):
    """`x / rms(x) * weight` row by row, for a step's few rows and a prefill's many; with gradients the kernel
    declines."""
    x, weight = random((rows, 1, 130), 0), random((130,), 1)
    with paddle.no_grad():
        ours = decode_cpu.rms_norm(paddle.to_tensor(x), paddle.to_tensor(weight), 1e-6).numpy()
    assert decode_cpu.rms_norm(paddle.ones([1, 4]), paddle.ones([4]), 1e-6) is None
    x64 = x.astype("float64")
    expected = x64 / np.sqrt((x64**2).mean(axis=-1, keepdims=True) + 1e-6) * weight
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def continued_batch(torch_model, shape, prompts, steps, seed):
    """A left-padded batch of text prompts (`(length, seed)` each) continued by `steps` random ids: `(ids, mask,
    prompt length, the reference's logits over the whole sequence)`."""
    ids, mask = reference.left_pad([reference.prompt_ids(0, shape, length, 0, seed=s) for length, s in prompts])
    continuation = np.random.default_rng(seed).integers(0, 200, (len(prompts), steps))
    full_ids = np.concatenate([ids, continuation], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(continuation)], axis=1)
    expected, _ = reference.reference_forward(torch_model, full_ids, full_mask)
    return full_ids, full_mask, ids.shape[1], expected


def cached_logits(model, full_ids, full_mask, prompt_length, growth=None):
    """Last-position logits `[B, steps, vocab]`: a prefill of the first `prompt_length` ids, then one token at a
    time, without gradients (`growth`: the cache's spare columns per reallocation)."""
    cache = KVCache(model.config)
    if growth is not None:
        cache.growth = growth
    stepped = []
    with paddle.no_grad():
        for end in range(prompt_length, full_ids.shape[1] + 1):
            start = 0 if end == prompt_length else end - 1
            output = model(
                paddle.to_tensor(full_ids[:, start:end]),
                attention_mask=paddle.to_tensor(full_mask[:, :end]),
                past_key_values=cache,
                last_logits_only=True,
            )
            stepped.append(output.logits.numpy()[:, 0])
    return np.stack(stepped, axis=1)


@pytest.fixture(params=[True, False], ids=["one_call", "layer_by_layer"])
def one_call(request, monkeypatch):
    """A decode step through every layer in one kernel call, or layer by layer (as a layer with LoRA runs: its
    `kernel_tensors` is None), kernel by kernel."""
    if not request.param:
        monkeypatch.setattr(Qwen2DecoderLayer, "kernel_tensors", lambda layer: None)
    return request.param


def assert_step_kernel_calls(calls, product, layers, prefills, steps, one_call):
    """The kernel calls of `prefills` prefills and `steps` one-token steps: each prefill attends through
    `cached_attention` in every layer and its head reads one row per sequence through `product`; each step is one
    `decode_layers` call, or per layer the 7 linear layers and attention, then the head."""
    per_step = 1 if one_call else 7 * layers + 1
    assert calls["decode_layers"] == (steps if one_call else 0)
    assert calls["cached_attention"] == layers * (prefills + (0 if one_call else steps))
    assert calls[product] == prefills + per_step * steps


@pytest.mark.parametrize("shape", [SHAPES[1], TinyShape("untied", tie_word_embeddings=False)], ids=["gqa", "untied"])
def test_cached_decoding_through_the_kernels_matches_the_reference(
    shape, reference_models, tmp_path, counting_library, one_call, threads
):
    """Prefill, then one token at a time for a left-padded batch without gradients (our kernels on every linear
    layer, the head and attention): the logits of the transformers reference run over the whole sequence."""
    torch_model = reference_models(shape)
    model = GOTQwenForCausalLM.from_pretrained(reference.save_got(torch_model, shape, str(tmp_path / "got")))
    full_ids, full_mask, prompt_length, expected = continued_batch(torch_model, shape, [(7, 4), (3, 0)], 4, seed=2)

    stepped = cached_logits(model, full_ids, full_mask, prompt_length, growth=3)  # free columns in most steps
    assert reference.relative_error(stepped, expected[:, prompt_length - 1 :]) <= 1e-5
    steps = full_ids.shape[1] - prompt_length
    assert_step_kernel_calls(counting_library.calls, "skinny_matmul", shape.text_layers, 1, steps, one_call)


def test_a_step_in_one_call_takes_silu_over_its_whole_range(tmp_path, counting_library):
    """The one-call step's own silu (exp taken of -|gate| only, 0 below -87) against the reference's, with gate
    projections scaled so that the gate values reach far beyond +-87 on both sides."""
    import torch

    shape = SHAPES[1]
    torch_model = reference.build_reference(shape, seed=5)
    gate_values = []
    with torch.no_grad():
        for layer in torch_model.language_model.model.layers:
            layer.mlp.gate_proj.weight.mul_(3000.0)
            layer.mlp.down_proj.weight.mul_(1e-3)  # keeps the residual stream in range
            layer.mlp.gate_proj.register_forward_hook(lambda module, inputs, output: gate_values.append(output))
    model = GOTQwenForCausalLM.from_pretrained(reference.save_got(torch_model, shape, str(tmp_path / "got")))
    full_ids, full_mask, prompt_length, expected = continued_batch(torch_model, shape, [(6, 1), (4, 0)], 3, seed=3)
    gates = torch.cat([values.flatten() for values in gate_values])
    assert gates.min() < -200 and gates.max() > 200

    stepped = cached_logits(model, full_ids, full_mask, prompt_length)
    assert reference.relative_error(stepped, expected[:, prompt_length - 1 :]) <= 1e-5
    assert counting_library.calls["decode_layers"] == full_ids.shape[1] - prompt_length


@pytest.mark.parametrize("shape", [(1, 45), (300, 130)], ids=["step", "prefill"])
def test_silu_times_equals_float64_numpy_in_place(shape, threads):
    """SwiGLU's `silu(gate) * up` written into `gate`, over gates from -120 to 120 (exp underflows below -87);
    with gradients, or with shapes that differ, the kernel declines."""
    gate = np.linspace(-120.0, 120.0, math.prod(shape), dtype="float32").reshape(shape)
    up = random(shape, 2)
    with paddle.no_grad():
        gate_tensor = paddle.to_tensor(gate)
        ours = decode_cpu.silu_times(gate_tensor, paddle.to_tensor(up))
        assert ours is gate_tensor
        assert decode_cpu.silu_times(paddle.ones([2, 4]), paddle.ones([2, 3])) is None
    assert decode_cpu.silu_times(paddle.ones([2, 4]), paddle.ones([2, 4])) is None
    gate64 = gate.astype("float64")
    expected = gate64 / (1.0 + np.exp(-gate64)) * up
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize(
    "shape,feature_major",
    [((2, 5, 45), False), ((300, 130), False), ((2, 45, 37), True)],
    ids=["rows", "prefill", "feature_major"],
)
def test_plus_bias_adds_in_place_what_numpy_adds(shape, feature_major, threads):
    """A product's bias, token-major or feature-major (odd sizes: no whole vectors), added into the output by our
    kernel: exactly numpy's float32 sums. With gradients Paddle adds, into a new tensor."""
    output = random(shape, 0)
    bias = random((shape[-2] if feature_major else shape[-1],), 1)
    expected = output + (bias[:, None] if feature_major else bias)
    with paddle.no_grad():
        tensor = paddle.to_tensor(output)
        assert decode_cpu.plus_bias(tensor, paddle.to_tensor(bias), feature_major) is tensor
    np.testing.assert_array_equal(tensor.numpy(), expected)
    tensor = paddle.to_tensor(output)
    added = decode_cpu.plus_bias(tensor, paddle.to_tensor(bias), feature_major)
    np.testing.assert_array_equal(added.numpy(), expected)
    np.testing.assert_array_equal(tensor.numpy(), output)


@pytest.fixture
def reloaded_library():
    """`load_library` forgets its cached answer before and after the test (which sets the environment it reads)."""
    decode_cpu.load_library.cache_clear()
    yield
    decode_cpu.load_library.cache_clear()


def test_without_a_compiler_decoding_falls_back_to_paddle(monkeypatch, tmp_path, logged, reloaded_library):
    """A missing compiler is logged once and every product runs in Paddle: same logits."""
    monkeypatch.setenv("PADDLE_GOT_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert decode_cpu.load_library() is None
    x, weight = random((2, 64), 0), random((64, 300), 1)
    with paddle.no_grad():
        fallback = decode_cpu.matmul(paddle.to_tensor(x), paddle.to_tensor(weight)).numpy()
    assert "No C++ compiler" in logged.text
    np.testing.assert_allclose(fallback, x.astype("float64") @ weight, rtol=1e-5, atol=1e-4)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_build_is_a_warning_not_an_error(monkeypatch, tmp_path, logged, reloaded_library):
    """A compiler that fails leaves no library behind and Paddle's kernels in charge."""
    compiler = tmp_path / "broken-c++"
    compiler.write_text("#!/bin/sh\necho 'broken-c++: error: cannot compile' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("PADDLE_GOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(compiler))
    assert decode_cpu.load_library() is None
    assert "cannot compile" in logged.text
    assert not any((tmp_path / "cache").glob("*.so"))


def test_the_library_builds_into_the_cache_directory(monkeypatch, tmp_path, logged, reloaded_library):
    """A fresh cache directory gets the compiled library (the pause is announced), which then runs the product."""
    monkeypatch.setenv("PADDLE_GOT_CACHE", str(tmp_path))
    library = decode_cpu.load_library()
    assert library is not None
    assert [path.suffix for path in tmp_path.iterdir()] == [".so"]
    assert f"Compiling the CPU decode kernels (once) into {tmp_path}" in logged.text
    x, weight = random((3, 64), 0), random((64, 45), 1)
    with paddle.no_grad():
        ours = decode_cpu.matmul(paddle.to_tensor(x), paddle.to_tensor(weight)).numpy()
    np.testing.assert_allclose(ours, x.astype("float64") @ weight, rtol=1e-5, atol=1e-4)


def bfloat16_values(array):
    """`array` rounded to the nearest bfloat16 values (still float32)."""
    return paddle.to_tensor(array).astype("bfloat16").astype("float32").numpy()


@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("in_features,out_features", [(64, 300), (37, 45), (130, 1003), (130, 2100)])
@pytest.mark.parametrize("weight_is_out_by_in", [False, True], ids=["in_by_out", "out_by_in"])
def test_bfloat16_weight_matmul_equals_float64_numpy(
    rows, in_features, out_features, weight_is_out_by_in, threads, counting_library, wide_products
):
    """A bfloat16 weight widened in registers: the float64 product of its exact values (AVX2 and AVX-512 panels)."""
    x = random((rows, 1, in_features), 0)
    weight = bfloat16_values(random((in_features, out_features), 1))
    bias = random((out_features,), 2)
    stored = np.ascontiguousarray(weight.T) if weight_is_out_by_in else weight
    with paddle.no_grad():
        ours = decode_cpu.matmul(
            paddle.to_tensor(x),
            paddle.to_tensor(stored).astype("bfloat16"),
            paddle.to_tensor(bias),
            weight_is_out_by_in=weight_is_out_by_in,
        )
    expected = x.astype("float64") @ weight.astype("float64") + bias
    assert ours.dtype == paddle.float32
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5, atol=1e-5 * np.sqrt(in_features))
    assert counting_library.calls["skinny_matmul_bf16"] == 1 and counting_library.calls["skinny_matmul"] == 0


@pytest.mark.parametrize("shape", [(7,), (3, 5), (1024, 65)], ids=["remainder_only", "small", "several_chunks"])
def test_bfloat16_weights_are_widened_bit_for_bit_as_paddle_casts_them(shape, threads, counting_library):
    """In inference our kernel widens a bfloat16 weight for Paddle's matmuls: the same bits as Paddle's cast, for
    ordinary, subnormal, signed-zero, infinite and NaN values (with gradients, Paddle's cast runs)."""
    values = random(shape, 5).ravel() * np.float32(1e3)
    values[:4] = [np.inf, -np.inf, np.nan, -0.0]
    values[4:6] = np.array([1e-39, -3e-40], dtype="float32")  # subnormal in float32 and bfloat16
    weight = paddle.to_tensor(values.reshape(shape)).astype("bfloat16")
    activations = paddle.zeros([1, shape[-1]])
    expected = weight.astype("float32").numpy()
    with paddle.no_grad():
        ours = decode_cpu.weight_in(weight, activations).numpy()
    np.testing.assert_array_equal(ours.view("uint32"), expected.view("uint32"))
    assert counting_library.calls["widen_bf16"] == 1
    assert decode_cpu.weight_in(weight, activations).dtype == paddle.float32
    assert counting_library.calls["widen_bf16"] == 1


def bfloat16_valued_models(shape, tmp_path):
    """`(reference, ours)`: a reference model whose weights hold bfloat16 values (run in float32), and ours loaded
    from it holding the decoder's product weights in bfloat16."""
    import torch

    torch_model = reference.build_reference(shape, seed=3)
    with torch.no_grad():
        for parameter in torch_model.parameters():
            parameter.copy_(parameter.to(torch.bfloat16).to(torch.float32))
    model = GOTQwenForCausalLM.from_pretrained(reference.save_got(torch_model, shape, str(tmp_path / "got")))
    model.keep_decoder_weights_in_bfloat16()
    return torch_model, model


@pytest.mark.parametrize("shape", [SHAPES[1], TinyShape("untied", tie_word_embeddings=False)], ids=["gqa", "untied"])
def test_decoding_on_bfloat16_weights_matches_the_reference(shape, tmp_path, counting_library, one_call):
    """The reference with bfloat16-valued weights, run in float32, against ours holding the decoder's product
    weights in bfloat16: prefill (Paddle's kernels on widened weights) and cached steps (ours on bfloat16)."""
    torch_model, model = bfloat16_valued_models(shape, tmp_path)
    assert {layer.weight.dtype for layer in model.decoder_product_layers()} == {paddle.bfloat16}
    assert model.qwen2.layers[0].self_attn.q_proj.bias.dtype == paddle.float32
    assert model.qwen2.layers[0].input_layernorm.weight.dtype == paddle.float32
    full_ids, full_mask, prompt_length, expected = continued_batch(torch_model, shape, [(7, 4), (3, 0)], 4, seed=2)

    stepped = cached_logits(model, full_ids, full_mask, prompt_length)
    assert reference.relative_error(stepped, expected[:, prompt_length - 1 :]) <= 1e-4
    steps = full_ids.shape[1] - prompt_length
    assert_step_kernel_calls(counting_library.calls, "skinny_matmul_bf16", shape.text_layers, 1, steps, one_call)
    assert counting_library.calls["skinny_matmul"] == 0


@pytest.mark.parametrize("shape", [(9,), (1024, 65)], ids=["one_chunk", "several_chunks"])
def test_float32_is_narrowed_to_bfloat16_as_torch_rounds_it(shape, threads, wide_tiles):
    """To nearest, ties to even, as torch's cast: ordinary, tied, subnormal, overflowing, infinite and signed-zero
    values bit for bit; a NaN stays a NaN (scalar, and 16 at a time on AVX-512)."""
    import torch

    values = random(shape, 6).ravel() * np.float32(1e3)
    values[:7] = [np.inf, -np.inf, -0.0, 1e-39, 3.4e38, 1 + 2**-8, -(1 + 3 * 2**-8)]  # the last two are ties
    nan_index = values.size - 2
    values[nan_index] = np.nan
    values.view("uint32")[-1] = 0x7FFFFFFF  # a NaN whose rounding would carry into the sign bit
    narrowed = np.empty(values.size, dtype="uint16")
    decode_cpu.load_library().narrow_bf16(values.ctypes.data, values.size, narrowed.ctypes.data, threads)
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view("uint16")
    widened = (narrowed.astype("uint32") << 16).view("float32")
    assert np.isnan(widened[nan_index:]).all()
    np.testing.assert_array_equal(narrowed[:nan_index], expected[:nan_index])
    assert list(widened[:7]) == [np.inf, -np.inf, 0.0, expected_float(expected[3]), np.inf, 1.0, -(1 + 2**-6)]


def expected_float(bits):
    """The float32 whose upper half is the 16-bit `bits`."""
    return float((np.array([bits], dtype="uint32") << 16).view("float32")[0])


needs_native_bfloat16 = pytest.mark.skipif(
    decode_cpu.load_onednn() is None, reason="oneDNN multiplies bfloat16 natively only with AMX or AVX512-BF16"
)


@pytest.fixture(params=["amx", "onednn"])
def bfloat16_products(request, monkeypatch):
    """Run `bfloat16_linear` on our AMX kernel (where the CPU has AMX) and on oneDNN's GEMM (AMX taken away)."""
    if request.param == "amx" and not decode_cpu.amx_usable():
        pytest.skip("this CPU has no AMX (or Linux does not let this process use it)")
    if request.param == "onednn":
        monkeypatch.setattr(decode_cpu, "amx_usable", lambda: False)
    return request.param


def bfloat16_layer(weight: np.ndarray, bias: np.ndarray) -> paddle.nn.Linear:
    """An nn.Linear holding `weight` `[in, out]` in bfloat16 and `bias` in float32, as the decoder keeps them."""
    layer = paddle.nn.Linear(*weight.shape)
    held = layer.create_parameter(list(weight.shape), dtype="bfloat16")
    held.set_value(paddle.to_tensor(weight).astype("bfloat16"))
    layer.weight = held
    layer.bias.set_value(paddle.to_tensor(bias))
    return layer


@needs_native_bfloat16
# Rows, depth and columns off and on whole tiles; the last: two depth chunks (kProductChunkDepth) and two row chunks.
@pytest.mark.parametrize(
    "rows,in_features,out_features", [(9, 64, 300), (306, 130, 1003), (40, 37, 45), (600, 1100, 96)]
)
@pytest.mark.parametrize("layout", ["row_major", "to_feature_major", "from_feature_major"])
def test_bfloat16_linear_is_the_product_of_the_activations_rounded_to_bfloat16(
    rows, in_features, out_features, layout, threads, bfloat16_products, counting_library
):
    """A bfloat16 linear layer on rows `[N, L, in]`, into feature-major `[N, out, L]` and from feature-major
    `[N, in, L]`: the float64 product of the activations rounded to bfloat16 (by torch) and the weight, plus the bias,
    to float32 accuracy; against the unrounded activations it is off by bfloat16's rounding."""
    import torch

    x = random((2, rows, in_features), 0)
    weight = bfloat16_values(random((in_features, out_features), 1))
    bias = random((out_features,), 2)
    layer = bfloat16_layer(weight, bias)
    with paddle.no_grad():
        if layout == "row_major":
            ours = decode_cpu.bfloat16_linear(layer, paddle.to_tensor(x))
        elif layout == "to_feature_major":
            ours = decode_cpu.bfloat16_linear(layer, paddle.to_tensor(x), out_feature_major=True)
        else:
            features = paddle.to_tensor(np.ascontiguousarray(x.transpose(0, 2, 1)))
            ours = decode_cpu.bfloat16_linear(layer, features, activations_feature_major=True)
    ours = ours.numpy()
    if layout == "to_feature_major":
        ours = ours.transpose(0, 2, 1)
    rounded = torch.from_numpy(x).to(torch.bfloat16).double().numpy()
    assert ours.shape == (2, rows, out_features)
    expected = rounded @ weight.astype("float64") + bias
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5 * np.sqrt(in_features))
    unrounded = x.astype("float64") @ weight.astype("float64") + bias
    assert 1e-4 < reference.relative_error(ours, unrounded) < 1e-2
    assert counting_library.calls["amx_linear"] == (bfloat16_products == "amx")


@pytest.mark.skipif(not decode_cpu.amx_usable(), reason="this CPU has no AMX (or Linux does not let this use it)")
@pytest.mark.parametrize("features", [64, 70], ids=["whole_vectors", "with_a_tail"])
@pytest.mark.parametrize("feature_major", [False, True], ids=["rows", "feature_major"])
def test_amx_rounds_the_activations_as_torch_does(features, feature_major):
    """Through an identity weight, the AMX product returns each activation as torch rounds it to bfloat16, bit for
    bit: ordinary values, ties (to even), values near bfloat16's largest and its smallest normal (a -0.0 comes back
    +0.0: the sums start at +0.0)."""
    import torch

    x = random((1, 40, features), 7) * np.float32(1e3)
    specials = [1 + 2**-8, -(1 + 3 * 2**-8), 3.3e38, 1 - 2**-9, 2**-126 * (1 + 2**-8)]
    x[0, :, : len(specials)] = specials  # at the start of each row (the vectors) and at its end (a tail of 70)
    x[0, :, -len(specials) :] = specials
    layer = bfloat16_layer(np.eye(features, dtype="float32"), np.zeros(features, dtype="float32"))
    with paddle.no_grad():
        if feature_major:
            features_first = paddle.to_tensor(np.ascontiguousarray(x.transpose(0, 2, 1)))
            ours = decode_cpu.amx_linear(layer, features_first, activations_feature_major=True, out_feature_major=False)
        else:
            ours = decode_cpu.amx_linear(layer, paddle.to_tensor(x), False, False)
    expected = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(ours.numpy().view("uint32"), expected.view("uint32"))


@pytest.mark.parametrize(
    "products", ["amx", "onednn", "float32"], ids=["amx", "onednn", "without_bfloat16_instructions"]
)
def test_a_prefill_on_bfloat16_gemms_stays_near_the_reference(products, tmp_path, counting_library, monkeypatch):
    """A model whose layers ask for bfloat16 GEMMs (`multiply_prompts_in_bfloat16`, as dtype bfloat16 runs on CPU)
    against the float32 reference with bfloat16-valued weights: the prompt's products round their inputs to bfloat16
    (within 2e-2 of the reference, and not within 1e-4), on our AMX kernel or on oneDNN's GEMM, and the cached steps
    stay on our exact kernels. Where oneDNN lacks native bfloat16 instructions (faked by asking for an instruction set
    no CPU reports) nothing is rounded."""

    if products != "float32" and decode_cpu.load_onednn() is None:
        pytest.skip("oneDNN multiplies bfloat16 natively only with AMX or AVX512-BF16")
    if products == "amx" and not decode_cpu.amx_usable():
        pytest.skip("this CPU has no AMX (or Linux does not let this process use it)")
    if products == "onednn":
        monkeypatch.setattr(decode_cpu, "amx_usable", lambda: False)
    if products == "float32":
        monkeypatch.setattr(decode_cpu, "ONEDNN_BFLOAT16_ISA", 1 << 30)
        decode_cpu.load_onednn.cache_clear()
        monkeypatch.setattr(decode_cpu, "load_onednn", functools.lru_cache(decode_cpu.load_onednn.__wrapped__))
    shape = SHAPES[1]
    torch_model, model = bfloat16_valued_models(shape, tmp_path)
    model.multiply_prompts_in_bfloat16()
    full_ids, full_mask, prompt_length, expected = continued_batch(torch_model, shape, [(12, 4), (9, 0)], 3, seed=2)
    assert full_ids.shape[0] * prompt_length > decode_cpu.MAX_ROWS

    stepped = cached_logits(model, full_ids, full_mask, prompt_length)
    error = reference.relative_error(stepped, expected[:, prompt_length - 1 :])
    products_per_prefill = 7 * shape.text_layers
    on_amx, narrowed = counting_library.calls["amx_linear"], counting_library.calls["narrow_bf16"]
    if products == "float32":
        assert error <= 1e-4 and narrowed == on_amx == 0
    else:
        assert 1e-4 < error <= 2e-2
        assert (on_amx, narrowed) == ((products_per_prefill, 0) if products == "amx" else (0, products_per_prefill))
    assert counting_library.calls["decode_layers"] == full_ids.shape[1] - prompt_length


def transparent_huge_pages() -> str:
    """Linux's transparent huge page mode ("always", "madvise" or "never"; "never" where the file is missing)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="utf-8") as modes:
            return modes.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "never"


def huge_page_bytes_at(address: int) -> int:
    """AnonHugePages of the mapping of this process that holds `address`, in bytes (/proc/self/smaps)."""
    with open("/proc/self/smaps", encoding="utf-8") as smaps:
        inside = False
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:
                low, high = (int(bound, 16) for bound in fields[0].split("-"))
                inside = low <= address < high
            elif inside and fields[0] == "AnonHugePages:":
                return int(fields[1]) * 1024
    return 0


def test_a_large_weight_moves_onto_huge_pages_keeping_its_values_and_parameter():
    """The output head's weight is re-homed in place (same parameter, same values, new buffer), on 2 MB pages where
    Linux's transparent huge pages are not off; a small weight stays where it is."""
    model_head = paddle.nn.Embedding(70000, 128)  # 35.8 MB of float32, above HUGE_PAGE_MIN_BYTES
    weight = model_head.weight
    values, address = weight.numpy().copy(), weight.data_ptr()
    assert decode_cpu.move_to_huge_pages(weight)
    assert model_head.weight is weight and weight.data_ptr() != address
    np.testing.assert_array_equal(weight.numpy(), values)
    if transparent_huge_pages() != "never":
        assert huge_page_bytes_at(weight.data_ptr() + decode_cpu.HUGE_PAGE_BYTES) >= decode_cpu.HUGE_PAGE_BYTES
    small = paddle.nn.Linear(64, 64).weight
    small_address = small.data_ptr()
    assert not decode_cpu.move_to_huge_pages(small) and small.data_ptr() == small_address
