"""Vision encoder helpers by hand, and the encoder + projector against the reference image features."""

from collections import Counter

import numpy as np
import paddle
import pytest
import torch

import reference
from reference import SHAPES

from paddle_got import GOTQwenForCausalLM
from paddle_got.kernels import decode_cpu
from paddle_got.modeling.vision import get_rel_pos, window_partition, window_unpartition


def test_window_partition_pads_bottom_right_and_round_trips():
    feature_map = paddle.arange(2 * 5 * 4 * 3, dtype="float32").reshape([2, 5, 4, 3]) + 1
    windows, padded = window_partition(feature_map, 3)
    assert padded == (6, 6) and windows.shape == [2 * 4, 3, 3, 3]
    # The second window of the first map covers rows 0-2, columns 3-5: column 3 is real, 4-5 are zero padding.
    np.testing.assert_array_equal(windows[1, :, 0].numpy(), feature_map[0, 0:3, 3].numpy())
    assert float(windows[1, :, 1:].abs().sum()) == 0.0
    restored = window_unpartition(windows, 3, padded, (5, 4))
    np.testing.assert_array_equal(restored.numpy(), feature_map.numpy())


def test_rel_pos_table_indexing():
    table = paddle.arange(5 * 2, dtype="float32").reshape([5, 2])  # size 3 -> 2*3-1 rows
    relative = get_rel_pos(3, table).numpy()
    for i in range(3):
        for j in range(3):
            np.testing.assert_array_equal(relative[i, j], table.numpy()[i - j + 2])


@pytest.fixture(params=[True, False], ids=["inference", "with_gradients"])
def kernel_calls(request, monkeypatch):
    """`(inference, calls)`: run without gradients (where our CPU kernels attend and add the products' biases) or
    with them (Paddle's ops); `calls` counts the vision attentions and the bias additions our kernels ran."""
    calls = Counter()
    attention, plus_bias = decode_cpu.vision_attention, decode_cpu.plus_bias

    def counted_attention(*args):
        attended = attention(*args)
        calls["vision_attention"] += attended is not None
        return attended

    def counted_plus_bias(output, *args, **kwargs):
        total = plus_bias(output, *args, **kwargs)
        calls["plus_bias_in_place"] += total is output
        return total

    monkeypatch.setattr(decode_cpu, "vision_attention", counted_attention)
    monkeypatch.setattr(decode_cpu, "plus_bias", counted_plus_bias)
    return request.param, calls


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_image_features_match_reference(shape, checkpoint_dirs, reference_models, kernel_calls):
    """Encoder + net_2/net_3 + projector give the reference's image features, tile by tile, with every attention
    and every block's four biases (qkv, proj, lin1, lin2) through our kernels in inference and through Paddle's ops
    with gradients."""
    inference, calls = kernel_calls
    model = GOTQwenForCausalLM.from_pretrained(checkpoint_dirs(shape, "got"))
    pixels = reference.random_pixels(2, shape, seed=9)
    with torch.no_grad():
        expected = reference_models(shape).get_image_features(torch.from_numpy(pixels)).numpy()
    with paddle.set_grad_enabled(not inference):
        features = model.qwen2.encode_images(paddle.to_tensor(pixels)).numpy()
    assert features.shape == (2, shape.tokens_per_tile, shape.text_hidden)
    kernel_runs = inference and decode_cpu.load_library() is not None
    assert calls["vision_attention"] == (shape.vision_layers if kernel_runs else 0)
    assert calls["plus_bias_in_place"] == (4 * shape.vision_layers if kernel_runs else 0)
    assert reference.relative_error(features, expected) <= 1e-5
