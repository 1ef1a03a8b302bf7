"""Where and how the model runs: CPU threads (Paddle defaults to one on CPU) and the dtype for the device."""

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Tuple

import paddle

from .errors import GOTError


def available_cores() -> int:
    """CPU cores this process may use (respects affinity masks)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


_cpu_threads = 1
_pair_worker: Optional[ThreadPoolExecutor] = None


def set_cpu_threads(num_threads: Optional[int] = None) -> int:
    """Let Paddle's CPU kernels use `num_threads` (default: all available cores); returns the count set."""
    global _cpu_threads
    num_threads = num_threads or available_cores()
    paddle.base.core.set_num_threads(num_threads)
    _cpu_threads = num_threads
    return num_threads


def one_row_on_cpu(tensor: paddle.Tensor) -> bool:
    """True when `tensor` `[..., features]` holds a single row, on CPU, in inference, with 2+ threads allowed.

    Then a product with a weight matrix is a matrix-vector product, which MKL runs on one core (~21 GB/s of
    weights read here, whatever the thread count); two halves on two threads read at ~31 GB/s (`run_pair`).
    """
    rows = math.prod(tensor.shape[:-1])
    return rows == 1 and _cpu_threads >= 2 and tensor.place.is_cpu_place() and not paddle.is_grad_enabled()


def run_pair(first: Callable[[], paddle.Tensor], second: Callable[[], paddle.Tensor]) -> Tuple:
    """`(first(), second())`, computed at the same time: `first` on a helper thread (Paddle releases the GIL
    inside its kernels), `second` on this one. For independent, memory-bound inference work only."""
    global _pair_worker
    if _pair_worker is None:
        _pair_worker = ThreadPoolExecutor(1, thread_name_prefix="paddle_got_pair")

    def without_grad():
        with paddle.no_grad():
            return first()

    pending = _pair_worker.submit(without_grad)
    second_result = second()
    return pending.result(), second_result


def gpu_compute_capability():
    """`(major, minor)` of the current GPU, or None when Paddle has no usable GPU."""
    if not paddle.is_compiled_with_cuda() or paddle.device.cuda.device_count() == 0:
        return None
    return paddle.device.cuda.get_device_capability()


def resolve_dtype(requested: str = "auto") -> str:
    """The dtype to run in: `auto` gives bfloat16 on Ampere+ GPUs, float16 on older GPUs, float32 on CPU.

    Half precision on CPU is a GOTError: Paddle's CPU kernels have no bfloat16/float16 matmul.
    """
    capability = gpu_compute_capability()
    if requested == "auto":
        if capability is None:
            return "float32"
        return "bfloat16" if capability[0] >= 8 else "float16"
    if requested not in ("float32", "bfloat16", "float16"):
        raise GOTError(f"Unknown dtype {requested!r}: choose auto, float32, bfloat16 or float16.")
    if requested != "float32" and capability is None:
        raise GOTError(f"{requested} needs a GPU: Paddle's CPU kernels have no {requested} matmul; use float32.")
    if requested == "bfloat16" and capability[0] < 8:
        raise GOTError("bfloat16 needs an Ampere or newer GPU (A100, H20, ...); use float16 on this GPU.")
    return requested
