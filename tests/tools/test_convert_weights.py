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


def test_existing_destination_is_kept_unless_overwrite(checkpoint_dirs, tmp_path):
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "notes.txt").write_text("mine")
    source = checkpoint_dirs(SHAPES[0], "got")
    refused = run_tool("--src", source, "--dst", str(tmp_path / "dst"))
    assert refused.returncode == 2 and refused.stderr == (
        f"error: {tmp_path / 'dst'} already exists and is not empty: give another --dst, or --overwrite to replace "
        "the files it shares with the conversion.\n"
    )
    assert os.listdir(tmp_path / "dst") == ["notes.txt"]
    replaced = run_tool("--src", source, "--dst", str(tmp_path / "dst"), "--overwrite", "--dtype", "bfloat16")
    assert replaced.returncode == 0, replaced.stderr
    assert sorted(os.listdir(tmp_path / "dst")) == ["config.json", "model.safetensors", "notes.txt"]
    assert f"Wrote {tmp_path / 'dst'} (paddle layout, safetensors, bfloat16)." in replaced.stderr
    assert "stored as float32, loaded as bfloat16" in replaced.stderr
