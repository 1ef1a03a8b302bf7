"""The GOT API: PIL inputs, per-input errors instead of exceptions, a failed batch read again alone, streaming,
what reading imports."""

import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
from PIL import Image

import reference

from paddle_got import GOT, device, export
from paddle_got.engine import ModelRunner
from paddle_got.errors import ExportError
from paddle_got.kernels import decode_cpu
from paddle_got.processing import OCRRequest


def test_recognize_takes_pil_images_and_reports_bad_inputs(ocr_checkpoint, tmp_path):
    ocr = GOT.from_pretrained(ocr_checkpoint.directory)
    image = Image.new("RGB", (120, 90), "white")
    results = ocr.recognize([image, str(tmp_path / "missing.png")], max_new_tokens=4, batch_size=2)
    assert [r.image for r in results] == ["<image 0>", str(tmp_path / "missing.png")]
    assert results[0].error is None and isinstance(results[0].text, str)
    assert results[1].text is None and results[1].error.endswith("missing.png: no such file.")


def test_inputs_whose_batch_failed_are_read_again_alone(ocr_checkpoint, monkeypatch):
    images = [
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (70, 90, 3), dtype=np.uint8)) for seed in range(3)
    ]
    expected = reference.expected_texts(ocr_checkpoint, [OCRRequest([image]) for image in images], 20, 10)
    ocr = GOT.from_pretrained(ocr_checkpoint.directory)
    decode, rows_seen = ModelRunner.decode, []

    def decode_failing_at_the_third_step(runner, tokens):
        rows_seen.append(len(tokens))
        if len(rows_seen) == 3:
            raise MemoryError("out of memory")
        return decode(runner, tokens)

    monkeypatch.setattr(ModelRunner, "decode", decode_failing_at_the_third_step)
    results = ocr.recognize(images, max_new_tokens=10, batch_size=3)
    assert rows_seen[:3] == [3, 3, 3] and rows_seen[3:] == [1] * 9 * 3  # then each input alone: 9 decode steps
    assert [r.error for r in results] == [None] * 3 and [r.text for r in results] == expected


def bfloat16_checkpoint(tmp_path):
    """A tiny OCR checkpoint stored in bfloat16, as the release is, and its float32 reference on the same values."""
    import types

    import torch

    directory = str(tmp_path / "bf16")
    os.makedirs(directory)
    num_ranks = reference.write_tiktoken(directory) - reference.NUM_SPECIAL_TOKENS
    shape = reference.tokenizer_shape(reference.SHAPES[0], num_ranks)
    model = reference.build_ocr_reference(shape, num_ranks, seed=17)
    reference.save_got(model.to(torch.bfloat16), shape, directory)
    return types.SimpleNamespace(directory=directory, model=model.to(torch.float32), shape=shape)


def two_images():
    return [
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (70, 90, 3), dtype=np.uint8)) for seed in range(2)
    ]


def test_a_bfloat16_checkpoint_decodes_on_bfloat16_weights_with_the_reference_text(tmp_path):
    """The release is stored in bfloat16: on CPU its decoder weights stay bfloat16 (half the reads per token), and
    the texts still equal the reference's, run in float32 on the same values."""
    checkpoint, images = bfloat16_checkpoint(tmp_path), two_images()
    expected = reference.expected_texts(checkpoint, [OCRRequest([image]) for image in images], 20, 12)
    ocr = GOT.from_pretrained(checkpoint.directory)
    assert ocr.model.qwen2.layers[0].mlp.down_proj.weight.dtype == paddle.bfloat16
    assert ocr.model.qwen2.exported_encoder is None
    assert [r.text for r in ocr.recognize(images, max_new_tokens=12, batch_size=2)] == expected
    kept = GOT.from_pretrained(checkpoint.directory, bfloat16_decode_weights=False)
    assert kept.model.qwen2.layers[0].mlp.down_proj.weight.dtype == paddle.float32


def test_dtype_bfloat16_on_cpu_needs_amx_or_avx512_bf16_and_says_so_before_loading(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f\n")
    monkeypatch.setattr(device, "CPUINFO", str(cpuinfo))
    with pytest.raises(ExportError) as raised:
        GOT.from_pretrained(str(tmp_path / "no such model"), dtype="bfloat16")
    assert str(raised.value) == (
        "Precision bfloat16 runs on oneDNN's bfloat16 kernels, which need a CPU with AMX or AVX512-BF16 "
        f"(flag amx_bf16 or avx512_bf16 in {cpuinfo}), and this one has neither: use float32."
    )


def test_dtype_bfloat16_on_cpu_runs_the_encoder_exported_once_into_the_cache(tmp_path, monkeypatch):
    """dtype bfloat16 on an AMX / AVX512-BF16 CPU: bfloat16 decoder weights, and the encoder through Paddle
    Inference on oneDNN's bfloat16 kernels, from an export made into the cache on first use, found there next time,
    and taken from `<checkpoint>/inference` when the checkpoint has one.

    Where the CPU lacks those instructions its flags are faked: oneDNN then runs float32 kernels (measured: 8e-7 of
    the dygraph features), so the texts equal the reference's exactly; on a CPU with them the features are bfloat16's
    (about 1e-2 off) and the texts are not compared."""
    native = bool(set(export.BFLOAT16_CPU_FLAGS) & device.cpu_flags())
    if not native:
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text("processor\t: 0\nflags\t\t: avx2 fma avx512f avx512_bf16 amx_bf16\n")
        monkeypatch.setattr(device, "CPUINFO", str(cpuinfo))
    monkeypatch.setenv("PADDLE_GOT_CACHE", str(tmp_path / "cache"))
    checkpoint, images = bfloat16_checkpoint(tmp_path), two_images()
    ocr = GOT.from_pretrained(checkpoint.directory, dtype="bfloat16")
    qwen2 = ocr.model.qwen2
    assert isinstance(qwen2.exported_encoder, export.InferenceEncoder)
    assert qwen2.layers[0].mlp.down_proj.weight.dtype == paddle.bfloat16 and qwen2.compute_dtype == paddle.float32
    assert getattr(qwen2.layers[0].mlp.down_proj, decode_cpu.BFLOAT16_GEMM) is True  # a prompt's products
    dygraph_encoder = ("vision_tower_high.", "mm_projector_vary.")
    assert not [name for name, _ in qwen2.named_parameters() if name.startswith(dygraph_encoder)]
    (cached,) = (tmp_path / "cache" / "encoders").iterdir()
    assert sorted(os.listdir(cached)) == ["inference.json", "inference.pdiparams", "inference.yml"]

    pixels = paddle.to_tensor(reference.random_pixels(2, checkpoint.shape))
    with paddle.no_grad():
        exported_features = qwen2.encode_images(pixels).numpy()
        dygraph_features = GOT.from_pretrained(checkpoint.directory).model.qwen2.encode_images(pixels).numpy()
    error = np.abs(exported_features - dygraph_features).max() / np.abs(dygraph_features).max()
    assert error < (3e-2 if native else 1e-5)
    if not native:
        expected = reference.expected_texts(checkpoint, [OCRRequest([image]) for image in images], 20, 12)
        assert [r.text for r in ocr.recognize(images, max_new_tokens=12, batch_size=2)] == expected

    def no_export(*arguments, **options):
        raise AssertionError("exported again")

    with monkeypatch.context() as patch:
        patch.setattr(export, "export_encoder", no_export)
        again = GOT.from_pretrained(checkpoint.directory, dtype="bfloat16")
    assert again.model.qwen2.exported_encoder.directory == str(cached)
    export.export_checkpoint(checkpoint.directory)
    monkeypatch.setenv("PADDLE_GOT_CACHE", str(tmp_path / "other cache"))
    monkeypatch.setattr(export, "export_encoder", no_export)
    inside = GOT.from_pretrained(checkpoint.directory, dtype="bfloat16")
    assert inside.model.qwen2.exported_encoder.directory == os.path.join(checkpoint.directory, "inference")
    assert not (tmp_path / "other cache" / "encoders").exists()


def test_stream_callback_receives_exactly_the_final_text(ocr_checkpoint):
    ocr = GOT.from_pretrained(ocr_checkpoint.directory)
    image = Image.new("RGB", (200, 150), "gray")
    pieces = []
    (result,) = ocr.recognize(image, max_new_tokens=16, stream=pieces.append)
    assert result.text and "".join(pieces) == result.text


def test_reading_imports_no_paddlenlp(ocr_checkpoint):
    """The Qwen tokenizer is tiktoken: reading an image needs none of paddlenlp (2.5 s of imports)."""
    script = (
        "import sys\nfrom PIL import Image\nimport paddle_got\n"
        f"ocr = paddle_got.GOT.from_pretrained({ocr_checkpoint.directory!r})\n"
        "result = ocr.recognize(Image.new('RGB', (64, 48), 'white'), max_new_tokens=3)[0]\n"
        "assert result.error is None, result.error\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'paddlenlp'))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"
