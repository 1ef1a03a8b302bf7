"""paddle_got.process: the tools' process tuning, and that importing the library leaves the host process alone."""

import json
import os
import subprocess
import sys

import pytest

from paddle_got import process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IMPORT_THE_LIBRARY = """
import json, logging, os, warnings
before = list(warnings.filters)
import paddle_got
from paddle_got import pipeline, checkpoint, engine
logger = logging.getLogger("paddle_got")
print(json.dumps({
    "mkl": os.environ.get("MKL_DEBUG_CPU_TYPE"),
    "new_filters": [str(f[1].pattern) for f in warnings.filters if f not in before and f[1] is not None],
    "handlers": [type(h).__name__ for h in logger.handlers],
    "propagate": logger.propagate,
}))
"""


def test_importing_the_library_changes_nothing_in_the_host_process():
    environment = {k: v for k, v in os.environ.items() if k != "MKL_DEBUG_CPU_TYPE"}
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_THE_LIBRARY],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=environment,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["mkl"] is None
    assert not any("ccache" in pattern or "distutils" in pattern for pattern in seen["new_filters"])
    assert seen["handlers"] == ["NullHandler"] and seen["propagate"] is True


@pytest.mark.parametrize(
    "vendor, preset, expected",
    [
        ("AuthenticAMD", None, "5"),
        ("AuthenticAMD", "4", "4"),
        ("GenuineIntel", None, None),
    ],
)
def test_tune_process_picks_mkl_avx2_kernels_only_on_amd_and_keeps_a_users_value(
    vendor, preset, expected, tmp_path, monkeypatch
):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\n")
    monkeypatch.setattr(process, "CPUINFO", str(cpuinfo))
    monkeypatch.delenv("MKL_DEBUG_CPU_TYPE", raising=False)
    if preset is not None:
        monkeypatch.setenv("MKL_DEBUG_CPU_TYPE", preset)
    process.tune_process()
    assert os.environ.get("MKL_DEBUG_CPU_TYPE") == expected


def test_a_tool_hides_the_import_warnings_that_are_not_ours():
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "convert_weights.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0 and result.stderr == ""
