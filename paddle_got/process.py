"""Process-wide tuning for paddle_got's command-line tools, benchmarks and tests: `tune_process()`.

The library never calls it (importing paddle_got leaves the host process as it was); each tool calls it first
thing, before Paddle loads. An application that embeds paddle_got gets the same speed by calling it before its
first matrix product (see the README, "Using the library").

Paddle's CPU wheel ships an MKL that takes a slow generic path on AMD processors (measured on an AMD EPYC:
28 GFLOP/s per core for float32 GEMM instead of ~83 with AVX2). `MKL_DEBUG_CPU_TYPE=5` selects the AVX2 kernels;
it is set only on AMD CPUs (it would cap an AVX-512 Intel CPU at AVX2) and never overrides a user's own value.

Paddle's CPU tensors come straight from malloc. With glibc's defaults every block above ~128 KB is a fresh mmap,
so each new activation is page-faulted in and handed back when freed: an out-of-place elementwise op over 10 MB
took 5-7 ms instead of 0.7 ms. `tune_malloc` keeps blocks up to 32 MB (glibc's maximum) on the heap and keeps freed
heap memory for reuse; the peak (what a process needs) does not change.
"""

import ctypes
import os
import platform
import warnings

CPUINFO = "/proc/cpuinfo"


def is_amd_cpu() -> bool:
    """True when /proc/cpuinfo names an AMD processor (False where there is no such file)."""
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            return "AuthenticAMD" in f.read(4096)
    except OSError:
        return False


GLIBC_M_TRIM_THRESHOLD = -1
GLIBC_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring); True when glibc accepted both."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    accepted_mmap = libc.mallopt(GLIBC_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    accepted_trim = libc.mallopt(GLIBC_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    return bool(accepted_mmap and accepted_trim)


# Warnings that importing Paddle and paddlenlp print and that say nothing about paddle_got: Paddle's missing C++
# compiler cache (it matters only for building custom ops) and setuptools' distutils notice. (message start, category)
IMPORT_WARNINGS = (("No ccache found", UserWarning), ("Setuptools is replacing distutils", UserWarning))


def quiet_import_warnings() -> None:
    """Hide `IMPORT_WARNINGS` in this process."""
    for message, category in IMPORT_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def tune_process() -> None:
    """Apply the tuning of this module's docstring to the current process: glibc's malloc thresholds, MKL's AVX2
    kernels on AMD CPUs (never over a value the user set), the import warnings hidden. Call it before Paddle loads."""
    tune_malloc()
    if is_amd_cpu():
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    quiet_import_warnings()
