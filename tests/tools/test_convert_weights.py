"""tools/convert_weights.py end to end: any layout in, our layout out; failures write nothing."""

import os
import shutil
import subprocess
import sys

import numpy as np

from reference import SHAPES

from paddle_got import GOTQwenForCausalLM

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "convert_weights.py")


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=300)


def test_converts_original_layout_with_tokenizer_files(checkpoint_dirs, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(checkpoint_dirs(SHAPES[0], "got"), source)
    (source / "qwen.tiktoken").write_text("IQ== 0\n")
    result = run_tool("--src", str(source), "--dst", str(tmp_path / "dst"))
    assert result.returncode == 0, result.stderr
    assert "got layout" in result.stderr and result.stdout == ""
    assert sorted(os.listdir(tmp_path / "dst")) == ["config.json", "model.safetensors", "qwen.tiktoken"]
    converted = GOTQwenForCausalLM.from_pretrained(str(tmp_path / "dst")).state_dict()
    original = GOTQwenForCausalLM.from_pretrained(str(source)).state_dict()
    for name, tensor in original.items():
        np.testing.assert_array_equal(converted[name].numpy(), tensor.numpy())


def test_failure_is_one_line_and_writes_nothing(checkpoint_dirs, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(checkpoint_dirs(SHAPES[0], "hf"), source)
    os.remove(source / "model.safetensors")
    result = run_tool("--src", str(source), "--dst", str(tmp_path / "dst"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: No weights found in ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "dst").exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".staging")] == []
