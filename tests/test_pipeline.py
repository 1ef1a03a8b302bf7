"""The GOT API: PIL inputs, per-input errors instead of exceptions, streaming, what reading imports."""

import subprocess
import sys

from PIL import Image

from paddle_got import GOT


def test_recognize_takes_pil_images_and_reports_bad_inputs(ocr_checkpoint, tmp_path):
    ocr = GOT.from_pretrained(ocr_checkpoint.directory)
    image = Image.new("RGB", (120, 90), "white")
    results = ocr.recognize([image, str(tmp_path / "missing.png")], max_new_tokens=4, batch_size=2)
    assert [r.image for r in results] == ["<image 0>", str(tmp_path / "missing.png")]
    assert results[0].error is None and isinstance(results[0].text, str)
    assert results[1].text is None and results[1].error.endswith("missing.png: no such file.")


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
