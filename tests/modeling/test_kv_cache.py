"""How the KV caches grow: how much room a prompt's cache takes, and that growing keeps what is filled and never
holds a second copy of the whole cache."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import paddle

from paddle_got.config import GOTConfig
from paddle_got.modeling.kv_cache import GROWTH, KVCache, RowCache, grow_in_place


def test_a_cache_takes_a_quarter_more_than_it_needs_and_at_most_growth_more():
    config = GOTConfig()
    for needed, capacity in [(286, 286 + 71), (2000, 2000 + GROWTH), (3, 4)]:
        cache = KVCache(config)
        cache.reserve(needed)
        assert cache.capacity == capacity
        rows = RowCache(config, max_rows=2)
        rows.reserve(needed)
        assert rows.capacity == capacity


def test_growing_keeps_the_filled_positions_and_appends_zeros():
    rng = np.random.default_rng(0)
    filled = [rng.standard_normal((2, 3, 5, 4)).astype("float32") for _ in range(4)]
    buffers = [paddle.to_tensor(values) for values in filled]
    grow_in_place(buffers, 6)
    for buffer, values in zip(buffers, filled):
        assert buffer.shape == [2, 3, 11, 4]
        np.testing.assert_array_equal(buffer.numpy()[:, :, :5], values)
        assert not buffer.numpy()[:, :, 5:].any()


GROW_AND_MEASURE = textwrap.dedent(
    """
    import json
    import paddle
    from paddle_got.modeling.kv_cache import grow_in_place

    def peak_kb():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

    buffers = [paddle.ones([4, 4, 1024, 64]) for _ in range(48)]  # 48 layers' keys or values, 4 MB each
    before = peak_kb()
    grow_in_place(buffers, 256)
    print(json.dumps({"cache_kb": 48 * 4 * 1024, "peak_rise_kb": peak_kb() - before}))
    """
)


def test_growing_holds_one_old_buffer_at_a_time_not_a_second_cache():
    """In a fresh process (its peak is the cache's own): growing a 192 MB cache by a quarter raises the peak by the
    quarter and about one buffer, where rebuilding all buffers before dropping the old ones raised it by 1.25x the
    cache."""
    run = subprocess.run([sys.executable, "-c", GROW_AND_MEASURE], capture_output=True, text=True, check=True)
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    assert measured["peak_rise_kb"] < 0.5 * measured["cache_kb"]
