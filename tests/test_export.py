"""paddle_got.export: the Paddle Inference encoder gives the dygraph `encode_images` features, whatever the tile
count; its files, its metadata, and the bfloat16 CPU check."""

import ctypes
import os

import numpy as np
import paddle
import pytest
import yaml

import reference
from reference import SHAPES

from paddle_got import GOTQwenForCausalLM, device
from paddle_got.errors import BadInputError, ExportError
from paddle_got.export import InferenceEncoder, check_bfloat16_cpu, export_encoder

OPENMP_RUNTIME = os.path.join(os.path.dirname(paddle.__file__), "libs", "libiomp5.so")  # what Paddle's MKL runs on
NO_BF16_CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma avx512f\n"
AMX_CPUINFO = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16\n"


def no_bf16_sentence(cpuinfo) -> str:
    return (
        "Precision bfloat16 runs on oneDNN's bfloat16 kernels, which need a CPU with AMX or AVX512-BF16 "
        f"(flag amx_bf16 or avx512_bf16 in {cpuinfo}), and this one has neither: use float32."
    )


@pytest.fixture(scope="module")
def exported(ocr_checkpoint, tmp_path_factory):
    """`(model, export directory)`: the tiny OCR checkpoint loaded in float32 and its encoder exported."""
    model = GOTQwenForCausalLM.from_pretrained(ocr_checkpoint.directory)
    directory = str(tmp_path_factory.mktemp("export") / "inference")
    export_encoder(model, directory, source_checkpoint=ocr_checkpoint.directory)
    return model, directory


def encode(model, pixels: np.ndarray) -> np.ndarray:
    with paddle.no_grad():
        return model.qwen2.encode_images(paddle.to_tensor(pixels)).numpy()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_predictor_gives_the_dygraph_features_for_one_and_several_tiles(shape, checkpoint_dirs, tmp_path):
    """Windows padded or not, global blocks or none: the exported program is the dygraph encoder + projector, and
    tiles fed one run at a time come back in order."""
    model = GOTQwenForCausalLM.from_pretrained(checkpoint_dirs(shape, "got"))
    export_encoder(model, str(tmp_path / "inference"))
    encoder = InferenceEncoder(str(tmp_path / "inference"), num_threads=1)
    for num_tiles in (1, 3):
        pixels = reference.random_pixels(num_tiles, shape, seed=num_tiles)
        expected = encode(model, pixels)  # after the export: the model is left as it was
        features = encoder(paddle.to_tensor(pixels))
        assert isinstance(features, paddle.Tensor) and features.dtype == paddle.float32
        assert features.shape == [num_tiles, shape.tokens_per_tile, shape.text_hidden]
        scale = np.abs(expected).max()
        np.testing.assert_allclose(features.numpy(), expected, rtol=0, atol=1e-4 * scale)
    assert np.abs(expected[0] - expected[1]).max() > 0.1 * scale  # distinct tiles: an order mix-up would show


def test_export_files_and_metadata(exported, ocr_checkpoint):
    _, directory = exported
    assert sorted(os.listdir(directory)) == ["inference.json", "inference.pdiparams", "inference.yml"]
    assert [name for name in os.listdir(os.path.dirname(directory)) if name.startswith(".staging")] == []
    with open(os.path.join(directory, "inference.yml"), encoding="utf-8") as f:
        metadata = yaml.safe_load(f)
    shape = ocr_checkpoint.shape
    assert metadata["input"]["name"] == "pixel_values" and metadata["input"]["dtype"] == "float32"
    assert metadata["input"]["shape"] == [1, 3, shape.image_size, shape.image_size]
    assert metadata["input"]["mean"] == [0.48145466, 0.4578275, 0.40821073]
    assert metadata["output"] == {"shape": [1, shape.tokens_per_tile, shape.text_hidden], "dtype": "float32"}
    assert metadata["source_checkpoint"] == os.path.abspath(ocr_checkpoint.directory)
    assert metadata["paddle_version"] == paddle.__version__


def test_loading_and_running_print_nothing_on_stdout(exported, ocr_checkpoint, capfd):
    """Paddle 3.3.1 prints a check's name on stdout when oneDNN first selects its kernels; tools' stdout is theirs."""
    _, directory = exported
    capfd.readouterr()
    encoder = InferenceEncoder(directory)
    encoder(paddle.to_tensor(reference.random_pixels(2, ocr_checkpoint.shape)))
    assert capfd.readouterr().out == ""


def test_tiles_of_another_size_are_refused(exported):
    _, directory = exported
    encoder = InferenceEncoder(directory)
    with pytest.raises(BadInputError) as raised:
        encoder(paddle.zeros([2, 3, 32, 32]))
    assert str(raised.value) == "The exported encoder takes tiles [T, 3, 64, 64], got [2, 3, 32, 32]."


def test_a_directory_without_an_export_is_named(tmp_path):
    with pytest.raises(ExportError) as raised:
        InferenceEncoder(str(tmp_path))
    assert str(raised.value) == (
        f"No exported encoder in {tmp_path}: inference.json, inference.pdiparams, "
        "inference.yml missing (write one with tools/export_model.py)."
    )


def test_a_bfloat16_model_is_not_exported(ocr_checkpoint, tmp_path):
    model = GOTQwenForCausalLM.from_pretrained(ocr_checkpoint.directory, dtype="bfloat16")
    with pytest.raises(ExportError, match="^The encoder is exported in float32, and this model is bfloat16: load"):
        export_encoder(model, str(tmp_path / "inference"))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("cpuinfo_text", [NO_BF16_CPUINFO, None], ids=["avx512f_only", "unreadable"])
def test_bfloat16_needs_amx_or_avx512_bf16(cpuinfo_text, exported, tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    if cpuinfo_text is not None:
        cpuinfo.write_text(cpuinfo_text)
    monkeypatch.setattr(device, "CPUINFO", str(cpuinfo))
    with pytest.raises(ExportError) as raised:
        InferenceEncoder(exported[1], precision="bfloat16")
    assert str(raised.value) == no_bf16_sentence(cpuinfo)


def test_bfloat16_check_passes_on_an_amx_cpu(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(AMX_CPUINFO)
    monkeypatch.setattr(device, "CPUINFO", str(cpuinfo))
    assert {"amx_bf16", "avx512_bf16"} <= device.cpu_flags()
    check_bfloat16_cpu()


def test_unknown_precision_is_refused(exported):
    with pytest.raises(ExportError, match=r"^Unknown precision 'float16': choose float32 or bfloat16\.$"):
        InferenceEncoder(exported[1], precision="float16")


@pytest.mark.skipif(not os.path.exists(OPENMP_RUNTIME), reason="this Paddle wheel ships no libiomp5")
def test_the_predictor_leaves_paddles_cpu_threads_as_they_were(exported):
    """A predictor's run leaves the math library on one thread; ours gives back the count `set_cpu_threads` set, so
    that the decoder's matmuls after the encoder keep every core."""
    _, directory = exported
    openmp = ctypes.CDLL(OPENMP_RUNTIME)
    device.set_cpu_threads(2)
    try:
        encoder = InferenceEncoder(directory, num_threads=2)
        assert openmp.omp_get_max_threads() == 2
        encoder(paddle.zeros(encoder.input_shape))
        assert openmp.omp_get_max_threads() == 2
    finally:
        device.set_cpu_threads()
