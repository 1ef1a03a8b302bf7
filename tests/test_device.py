"""Device choices on this CPU-only machine: auto means float32, half precision is a clear error, launched processes
share the cores."""

import pytest

from paddle_got import device
from paddle_got.device import cores_per_process, resolve_dtype, set_cpu_threads
from paddle_got.errors import GOTError


def test_auto_is_float32_on_cpu():
    assert resolve_dtype("auto") == "float32"
    assert resolve_dtype("float32") == "float32"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_on_cpu_is_refused(dtype):
    with pytest.raises(GOTError, match=rf"^{dtype} needs a GPU: Paddle's CPU kernels have no {dtype} matmul"):
        resolve_dtype(dtype)


def test_unknown_dtype():
    with pytest.raises(GOTError, match="Unknown dtype 'int4'"):
        resolve_dtype("int4")


def test_threads_default_to_available_cores():
    assert set_cpu_threads() >= 1
    assert set_cpu_threads(1) == 1


def test_processes_the_launcher_starts_on_one_machine_share_its_cores(monkeypatch):
    monkeypatch.setattr(device, "available_cores", lambda: 8)
    monkeypatch.delenv("PADDLE_LOCAL_SIZE", raising=False)
    assert cores_per_process() == 8
    monkeypatch.setenv("PADDLE_LOCAL_SIZE", "3")
    assert cores_per_process() == 2
    monkeypatch.setenv("PADDLE_LOCAL_SIZE", "16")
    assert cores_per_process() == 1
