"""Where and how the model runs: CPU threads (Paddle defaults to one on CPU), the CPU's feature flags, and the dtype
for the device."""

import os
from typing import Callable, Optional, Set

import paddle

from .constants import DTYPES
from .errors import GOTError
from .process import CPUINFO


def available_cores() -> int:
    """CPU cores this process may use (respects affinity masks)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_flags() -> Set[str]:
    """The feature flags `CPUINFO` lists for the first processor (`avx2`, `amx_bf16`, ...); empty where the file
    cannot be read or has none."""
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


_cpu_threads = 1


def set_cpu_threads(num_threads: Optional[int] = None) -> int:
    """Let Paddle's CPU kernels use `num_threads` (default: this process's share of the cores, all of them unless
    the launcher started several processes here); returns the count set."""
    global _cpu_threads
    num_threads = num_threads or cores_per_process()
    paddle.base.core.set_num_threads(num_threads)
    _cpu_threads = num_threads
    return num_threads


def cpu_threads() -> int:
    """The CPU thread count last given to `set_cpu_threads` (1 until then, Paddle's own default)."""
    return _cpu_threads


def join_launch(world: int) -> Optional[Callable[[], None]]:
    """In a process started by `paddle.distributed.launch` with `world` > 1 ranks: put it on its own GPU (when
    there are GPUs), join the ranks' process group (NCCL on GPU, gloo on CPU) and return a barrier over them;
    None for a single process."""
    if world <= 1:
        return None
    import paddle.distributed as dist

    if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        paddle.set_device(f"gpu:{dist.ParallelEnv().device_id}")
    dist.init_parallel_env()
    return dist.barrier


def leave_launch() -> None:
    """At the end of a run started by `paddle.distributed.launch`: wait until every rank is done (a rank that
    exits while another still writes closes their connection under it), then release the process group while the
    interpreter is still whole. Nothing for a single process."""
    import paddle.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
        dist.destroy_process_group()


def cores_per_process() -> int:
    """This process's fair share of the cores when the launcher starts several on one machine."""
    return max(1, available_cores() // int(os.environ.get("PADDLE_LOCAL_SIZE", 1)))


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
    if requested not in DTYPES:
        raise GOTError(f"Unknown dtype {requested!r}: choose auto, float32, bfloat16 or float16.")
    if requested != "float32" and capability is None:
        raise GOTError(f"{requested} needs a GPU: Paddle's CPU kernels have no {requested} matmul; use float32.")
    if requested == "bfloat16" and capability[0] < 8:
        raise GOTError("bfloat16 needs an Ampere or newer GPU (A100, H20, ...); use float16 on this GPU.")
    return requested
