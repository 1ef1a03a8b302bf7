"""Process set-up that must run before paddle is imported.

Paddle's CPU wheel ships an MKL that takes a slow generic path on AMD processors (measured on an AMD EPYC:
28 GFLOP/s per core for float32 GEMM instead of ~83 with AVX2). `MKL_DEBUG_CPU_TYPE=5` selects the AVX2 kernels;
it is set only on AMD CPUs (it would cap an AVX-512 Intel CPU at AVX2) and never overrides a user's own value.
"""

import os
import warnings

CPUINFO = "/proc/cpuinfo"


def is_amd_cpu() -> bool:
    """True when /proc/cpuinfo names an AMD processor (False where there is no such file)."""
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            return "AuthenticAMD" in f.read(4096)
    except OSError:
        return False


if is_amd_cpu():
    os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")

# Importing paddle warns about a missing C++ compiler cache that only matters for building custom ops.
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
# paddlenlp's import chain triggers this setuptools notice; it says nothing about our code.
warnings.filterwarnings("ignore", message="Setuptools is replacing distutils", category=UserWarning)
