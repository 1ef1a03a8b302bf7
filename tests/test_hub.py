"""Hub ids through each source's real client: the local cache first, the same one-sentence error offline."""

import os
import shutil
import subprocess
import sys

import pytest

from paddle_got.errors import GOTError
from paddle_got.hub import resolve_model_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INFER = os.path.join(REPO, "tools", "infer.py")


def test_hub_id_is_found_in_the_local_huggingface_cache(ocr_checkpoint, tmp_path, monkeypatch):
    """A hub id resolves offline to the cached snapshot, as huggingface_hub lays it out."""
    snapshot = tmp_path / "hub" / "models--someone--tiny-got" / "snapshots" / "0123abc"
    shutil.copytree(ocr_checkpoint.directory, snapshot)
    (tmp_path / "hub" / "models--someone--tiny-got" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-got" / "refs" / "main").write_text("0123abc")
    import huggingface_hub.constants

    # huggingface_hub reads these variables when imported; set its constants as the variables would have.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert os.path.samefile(resolve_model_path("someone/tiny-got"), snapshot)


def test_missing_directory_is_not_taken_for_a_hub_id(tmp_path):
    with pytest.raises(GOTError, match=r"Model directory .*nowhere does not exist"):
        resolve_model_path(str(tmp_path / "nowhere"))


def run_infer(image, model, environment, *args):
    command = [
        sys.executable,
        INFER,
        "--image_file",
        image,
        "--model_name_or_path",
        model,
        "--max_new_tokens",
        "6",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, **environment})
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("image") / "page.png"
    Image.new("RGB", (96, 64), "white").save(path)
    return str(path)


@pytest.fixture(scope="module")
def direct_text(image, ocr_checkpoint):
    result = run_infer(image, ocr_checkpoint.directory, {})
    assert result.returncode == 0 and result.stdout.strip(), result.stderr
    return result.stdout


def lay_out_cache(source, checkpoint, root):
    """Place `checkpoint` where the source's client looks for `someone/tiny-got`; the environment that says so."""
    if source == "modelscope":
        shutil.copytree(checkpoint, root / "models" / "someone--tiny-got" / "snapshots" / "master")
        return {"MODELSCOPE_CACHE": str(root)}
    shutil.copytree(checkpoint, root / ".cache" / "aistudio" / "paddle_got" / "someone--tiny-got")
    return {"AISTUDIO_CACHE_HOME": str(root)}


@pytest.mark.parametrize("source", ["modelscope", "aistudio"])
@pytest.mark.parametrize("chosen_by", ["flag", "environment"])
def test_cached_model_reads_offline(source, chosen_by, image, direct_text, ocr_checkpoint, tmp_path):
    environment = lay_out_cache(source, ocr_checkpoint.directory, tmp_path) | {"PADDLE_GOT_OFFLINE": "1"}
    if chosen_by == "flag":
        result = run_infer(image, "someone/tiny-got", environment, "--model_source", source)
    else:
        result = run_infer(image, "someone/tiny-got", environment | {"PADDLE_GOT_MODEL_SOURCE": source})
    assert result.returncode == 0, result.stderr
    assert result.stdout == direct_text


@pytest.mark.parametrize(
    "source, environment, command",
    [
        (
            "modelscope",
            {"PADDLE_GOT_OFFLINE": "1"},
            "modelscope download --model someone/tiny-got --local_dir tiny-got",
        ),
        (
            "aistudio",
            {"PADDLE_GOT_OFFLINE": "1"},
            "python tools/download_model.py --model_source aistudio --model_name_or_path someone/tiny-got "
            "--local_dir tiny-got",
        ),
        (
            "aistudio",
            {},
            "python tools/download_model.py --model_source aistudio --model_name_or_path "
            "someone/tiny-got --local_dir tiny-got",
        ),  # the real client, failing on the network
        (
            "huggingface",
            {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2"},
            "huggingface-cli download someone/tiny-got --local-dir tiny-got",
        ),  # a mirror that does not answer
    ],
    ids=["modelscope_offline", "aistudio_offline", "aistudio_no_network", "huggingface_mirror_down"],
)
def test_uncached_model_without_network_is_one_sentence(source, environment, command, image, tmp_path):
    environment = environment | {
        "MODELSCOPE_CACHE": str(tmp_path / "ms"),
        "AISTUDIO_CACHE_HOME": str(tmp_path),
        "HF_HOME": str(tmp_path / "hf"),
    }
    result = run_infer(image, "someone/tiny-got", environment, "--model_source", source)
    cache = "the local cache" if source == "huggingface" else f"the local {source} cache"
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: someone/tiny-got is not in {cache} and cannot be downloaded here: on a machine with network run "
        f"`{command}`, copy the tiny-got folder to this machine and pass --model_name_or_path /path/to/tiny-got."
    )
    aistudio_dir = tmp_path / ".cache" / "aistudio" / "paddle_got"
    assert not aistudio_dir.exists() or os.listdir(aistudio_dir) == []  # no half-downloaded folder left


def test_unknown_source_is_refused_before_anything_loads(image, tmp_path):
    result = run_infer(image, "someone/tiny-got", {}, "--model_source", "baidu")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: Unknown model source 'baidu': choose huggingface, modelscope, aistudio."


def test_download_tool_copies_a_cached_model_into_a_folder(ocr_checkpoint, tmp_path):
    environment = lay_out_cache("modelscope", ocr_checkpoint.directory, tmp_path / "cache")
    command = [
        sys.executable,
        os.path.join(REPO, "tools", "download_model.py"),
        "--model_source",
        "modelscope",
        "--model_name_or_path",
        "someone/tiny-got",
        "--local_dir",
        str(tmp_path / "copy"),
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **environment, "PADDLE_GOT_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{tmp_path / 'copy'}\n"
    assert sorted(os.listdir(tmp_path / "copy")) == sorted(os.listdir(ocr_checkpoint.directory))
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, **environment})
    assert again.returncode == 2 and again.stderr.strip() == (
        f"error: --local_dir {tmp_path / 'copy'} already exists: give a new folder."
    )
