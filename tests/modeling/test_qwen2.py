"""The decoder's KV cache, positions and attention bias, checked against full recomputation and by hand."""

import numpy as np
import paddle

import reference
from reference import SHAPES

from paddle_got import GOTQwenForCausalLM
from paddle_got.modeling.attention import build_attention_bias, position_ids_from_mask
from paddle_got.modeling.kv_cache import KVCache


def test_cached_decoding_equals_full_forward(checkpoint_dirs):
    """Prefill + one token at a time through the cache gives the logits of one pass over everything."""
    shape = SHAPES[1]  # grouped KV heads
    model = GOTQwenForCausalLM.from_pretrained(checkpoint_dirs(shape, "hf"))
    first = reference.prompt_ids(1, shape, 4, 3, seed=1)
    second = reference.prompt_ids(2, shape, 2, 2, seed=2)
    ids, mask = reference.left_pad([first, second])
    pixels = paddle.to_tensor(
        np.concatenate([reference.random_pixels(1, shape, 1), reference.random_pixels(2, shape, 2)])
    )
    continuation = np.random.default_rng(0).integers(0, 200, (2, 4))
    full_ids = np.concatenate([ids, continuation], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(continuation)], axis=1)
    full = model(paddle.to_tensor(full_ids), pixels, paddle.to_tensor(full_mask)).logits.numpy()

    cache = KVCache(model.config)
    cache.growth = 3  # force several growths during the test
    step = model(paddle.to_tensor(ids), pixels, paddle.to_tensor(mask), past_key_values=cache, last_logits_only=True)
    stepped = [step.logits.numpy()[:, 0]]
    for index in range(continuation.shape[1] - 1):
        upto = ids.shape[1] + index + 1
        step = model(
            paddle.to_tensor(continuation[:, index : index + 1]),
            attention_mask=paddle.to_tensor(full_mask[:, :upto]),
            past_key_values=cache,
        )
        stepped.append(step.logits.numpy()[:, 0])
    assert cache.length == full_ids.shape[1] - 1
    expected = full[:, ids.shape[1] - 1 : -1]
    assert reference.relative_error(np.stack(stepped, axis=1), expected) <= 1e-5


def test_positions_restart_at_each_rows_first_token():
    mask = paddle.to_tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(position_ids_from_mask(mask, 5).numpy(), [[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(position_ids_from_mask(mask, 1).numpy(), [[2], [4]])


def test_attention_bias_is_causal_and_hides_padding():
    mask = paddle.to_tensor([[0, 1, 1], [1, 1, 1]])
    bias = build_attention_bias(mask, 3, past_length=0, key_length=3, num_heads=2, dtype=paddle.float32).numpy()
    allowed = bias == 0
    assert bias.shape == (2, 2, 3, 3)
    for head in range(2):
        np.testing.assert_array_equal(allowed[0, head], [[0, 0, 0], [0, 1, 0], [0, 1, 1]])
        np.testing.assert_array_equal(allowed[1, head], np.tril(np.ones((3, 3), bool)))
    assert np.isfinite(bias).all()
    assert build_attention_bias(None, 3, past_length=0, key_length=3, num_heads=2, dtype=paddle.float32) is None


def test_attention_bias_hides_a_caches_free_columns():
    """Decoding one token at position 2 over a 5-column cache: columns 0-2 are visible, 3-4 are free capacity."""
    bias = build_attention_bias(None, 1, past_length=2, key_length=5, num_heads=2, dtype=paddle.float32).numpy()
    assert bias.shape == (1, 5)
    np.testing.assert_array_equal(bias[0] == 0, [1, 1, 1, 0, 0])
    mask = paddle.to_tensor([[0, 1, 1], [1, 1, 1]])
    bias = build_attention_bias(mask, 1, past_length=2, key_length=5, num_heads=2, dtype=paddle.float32).numpy()
    assert bias.shape == (2, 2, 1, 5)
    np.testing.assert_array_equal(bias[0, 1, 0] == 0, [0, 1, 1, 0, 0])
    np.testing.assert_array_equal(bias[1, 0, 0] == 0, [1, 1, 1, 0, 0])


def cached_logits(model, ids, mask, continuation):
    """Logits of a left-padded prompt, then of two cached one-token steps: `[B, 3, vocab]` numpy."""
    cache = KVCache(model.config)
    logits = [
        model(
            paddle.to_tensor(ids), attention_mask=paddle.to_tensor(mask), past_key_values=cache, last_logits_only=True
        ).logits.numpy()[:, 0]
    ]
    for step in range(2):
        mask = np.concatenate([mask, np.ones_like(mask[:, :1])], axis=1)
        token = paddle.to_tensor(continuation[:, step : step + 1])
        logits.append(model(token, attention_mask=paddle.to_tensor(mask), past_key_values=cache).logits.numpy()[:, 0])
    return np.stack(logits, axis=1)


def test_fused_attention_branch_equals_the_cpu_branch(checkpoint_dirs, monkeypatch):
    """The accelerator branch (scaled_dot_product_attention, row layout) and the CPU branch agree on CPU."""
    from paddle_got.kernels import decode_cpu
    from paddle_got.modeling import attention

    monkeypatch.setattr(decode_cpu, "kernels_apply", lambda *arguments: False)  # Paddle's attend, as on GPU
    shape = SHAPES[1]  # grouped KV heads
    model = GOTQwenForCausalLM.from_pretrained(checkpoint_dirs(shape, "hf"))
    ids, mask = reference.left_pad([reference.prompt_ids(0, shape, 5, 0, seed=3), reference.prompt_ids(0, shape, 2, 0)])
    continuation = np.random.default_rng(1).integers(0, 200, (2, 2))
    with paddle.no_grad():
        cpu_branch = cached_logits(model, ids, mask, continuation)
        monkeypatch.setattr(attention, "use_fused_attention", lambda tensor: True)
        fused_branch = cached_logits(model, ids, mask, continuation)
    assert reference.relative_error(fused_branch, cpu_branch) <= 1e-5
