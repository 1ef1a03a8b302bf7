"""tools/export_model.py end to end: a checkpoint in, a Paddle Inference encoder out (into the checkpoint by
default); a bad checkpoint gives one line on stderr, exit code 2, and writes nothing."""

import os
import shutil
import subprocess
import sys

import paddle
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "export_model.py")
EXPORT_FILES = ["inference.json", "inference.pdiparams", "inference.yml"]


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=300)


def test_exports_into_the_checkpoint_by_default(ocr_checkpoint, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(ocr_checkpoint.directory, checkpoint)
    result = run_tool("--model_name_or_path", str(checkpoint))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert f"Wrote {checkpoint / 'inference'} (inference.json, inference.pdiparams, inference.yml)." in result.stderr
    assert sorted(os.listdir(checkpoint / "inference")) == EXPORT_FILES
    assert not [name for name in os.listdir(checkpoint) if name.startswith(".staging")]
    metadata = yaml.safe_load((checkpoint / "inference" / "inference.yml").read_text())
    shape = ocr_checkpoint.shape
    assert metadata["input"]["shape"] == [1, 3, shape.image_size, shape.image_size]
    assert metadata["output"]["shape"] == [1, shape.tokens_per_tile, shape.text_hidden]
    assert metadata["source_checkpoint"] == str(checkpoint)
    assert metadata["paddle_version"] == paddle.__version__


def test_output_dir_is_where_the_export_goes(ocr_checkpoint, tmp_path):
    result = run_tool("--model_name_or_path", ocr_checkpoint.directory, "--output_dir", str(tmp_path / "exported"))
    assert result.returncode == 0, result.stderr
    assert os.listdir(tmp_path) == ["exported"]
    assert sorted(os.listdir(tmp_path / "exported")) == EXPORT_FILES
    assert "inference" not in os.listdir(ocr_checkpoint.directory)


def test_a_missing_checkpoint_is_one_line_and_exit_2(tmp_path):
    result = run_tool("--model_name_or_path", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr == f"error: Checkpoint directory {tmp_path / 'nowhere'} does not exist.\n"
    assert os.listdir(tmp_path) == []


def test_a_directory_without_a_checkpoint_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_tool("--model_name_or_path", str(tmp_path / "empty"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: No config.json found in {tmp_path / 'empty'}")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert os.listdir(tmp_path / "empty") == []
