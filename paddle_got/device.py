"""Where and how the model runs: CPU thread count (Paddle defaults to one thread on CPU)."""

import os
from typing import Optional

import paddle


def available_cores() -> int:
    """CPU cores this process may use (respects affinity masks)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def set_cpu_threads(num_threads: Optional[int] = None) -> int:
    """Let Paddle's CPU kernels use `num_threads` (default: all available cores); returns the count set."""
    num_threads = num_threads or available_cores()
    paddle.base.core.set_num_threads(num_threads)
    return num_threads
