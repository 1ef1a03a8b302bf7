"""tools/infer.py end to end: every mode's printed text equals the transformers reference's greedy text, and
every bad input gets one line on stderr and exit code 2."""

import html
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import reference

from paddle_got import device
from paddle_got.export import BFLOAT16_CPU_FLAGS
from paddle_got.processing import OCRRequest
from paddle_got.render import document_html, to_markdown

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INFER = os.path.join(REPO, "tools", "infer.py")
MAX_NEW_TOKENS = 24


def run_infer(*args, model=None, check_exit=None, env=None):
    command = [sys.executable, INFER, *args, "--max_new_tokens", str(MAX_NEW_TOKENS)]
    if model is not None:
        command += ["--model_name_or_path", model]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=environment)
    assert "Traceback" not in result.stderr, result.stderr
    if check_exit is not None:
        assert result.returncode == check_exit, result.stderr
    return result


def picture(path, width, height, seed):
    """A random-coloured picture with a few dark bars, saved to `path`; returns the path as a string."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(120, 256, (height, width, 3), dtype=np.uint8)
    for row in range(0, height, max(height // 6, 2)):
        pixels[row : row + 2, width // 8 : width - width // 8] = 20
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    return {
        "page": picture(folder / "page.png", 300, 400, 1),
        "wide": picture(folder / "wide.png", 500, 120, 2),
        "slide": picture(folder / "slide.jpg", 320, 180, 3),
    }


def load(path):
    return Image.open(path).convert("RGB")


@pytest.mark.parametrize(
    "args, request_options, ngram",
    [
        ([], {}, 20),
        (["--ocr_type", "format"], {"ocr_type": "format"}, 20),
        (["--box", "[30,40,250,300]"], {"box": (30, 40, 250, 300)}, 20),
        (["--color", "green", "--ocr_type", "format"], {"color": "green", "ocr_type": "format"}, 20),
        (["--multi_crop", "--max_crops", "4"], {"multi_crop": True, "max_crops": 4}, 0),
        (["--no_repeat_ngram_size", "3"], {}, 3),
        (["--query", "OCR:"], {"query": "OCR:"}, 20),
    ],
    ids=["plain", "format", "box", "color", "multi_crop", "ngram3", "query"],
)
def test_single_input_prints_the_reference_text(args, request_options, ngram, images, ocr_checkpoint):
    result = run_infer("--image_file", images["page"], *args, model=ocr_checkpoint.directory, check_exit=0)
    request = OCRRequest([load(images["page"])], **request_options)
    (expected,) = reference.expected_texts(ocr_checkpoint, [request], ngram, MAX_NEW_TOKENS)
    assert expected
    assert result.stdout == expected + "\n"


def test_multi_page_reads_all_inputs_as_one_document(images, ocr_checkpoint):
    result = run_infer(
        "--image_file",
        images["page"],
        images["wide"],
        "--multi_page",
        "--ocr_type",
        "format",
        model=ocr_checkpoint.directory,
        check_exit=0,
    )
    request = OCRRequest([load(images["page"]), load(images["wide"])], ocr_type="format", multi_page=True)
    assert result.stdout == reference.expected_texts(ocr_checkpoint, [request], 0, MAX_NEW_TOKENS)[0] + "\n"


def test_batch_of_mixed_sizes_equals_one_by_one(images, ocr_checkpoint):
    """Three inputs with 1, 3 and 5 tiles in one batch: JSON lines in input order, each the reference's text."""
    paths = [images["slide"], images["wide"], images["page"]]
    result = run_infer(
        "--image_file", *paths, "--multi_crop", "--batch_size", "3", model=ocr_checkpoint.directory, check_exit=0
    )
    records = [json.loads(line) for line in result.stdout.splitlines()]
    requests = [OCRRequest([load(path)], multi_crop=True) for path in paths]
    texts = reference.expected_texts(ocr_checkpoint, requests, 0, MAX_NEW_TOKENS)
    assert records == [{"image": p, "text": t} for p, t in zip(paths, texts)]


def test_pdf_pages_are_inputs_and_outputs_are_written(images, ocr_checkpoint, tmp_path):
    """An output directory gets a file per page (what --resume goes by); one .html or .md file holds the whole PDF,
    a section per page beside its image, and plain text is shown in it as it was read."""
    pdf = tmp_path / "doc.pdf"
    load(images["page"]).save(pdf, save_all=True, append_images=[load(images["wide"])])
    out_dir = tmp_path / "out"
    result = run_infer("--image_file", str(pdf), "--output", str(out_dir), model=ocr_checkpoint.directory, check_exit=0)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["image"], r["page"]) for r in records] == [(str(pdf), 1), (str(pdf), 2)]
    assert sorted(os.listdir(out_dir)) == ["doc_page1.txt", "doc_page2.txt"]
    assert (out_dir / "doc_page2.txt").read_text() == records[1]["text"] + "\n"
    assert records[0]["text"]
    for output in (["doc.html"], ["doc.md"], ["pages", "--render", "html"]):
        again = run_infer(
            "--image_file", str(pdf), "--output", str(tmp_path / output[0]), *output[1:], model=ocr_checkpoint.directory
        )
        assert again.returncode == 0 and again.stdout == result.stdout, again.stderr
    texts = [record["text"] for record in records]
    assert (tmp_path / "doc.md").read_text() == to_markdown(texts, "ocr", [1, 2]) + "\n"
    document = (tmp_path / "doc.html").read_text()
    assert document == document_html([(text, str(pdf), page) for text, page in zip(texts, (1, 2))], "ocr")
    assert document.count('<section class="page with-image"') == 2 and "<title>doc.pdf</title>" in document
    assert [document.count(f'<pre class="plain">{html.escape(text)}</pre>') for text in texts] == [1, 1]
    assert sorted(os.listdir(tmp_path / "pages")) == ["doc_page1.html", "doc_page2.html"]
    assert (tmp_path / "pages" / "doc_page2.html").read_text() == document_html([(texts[1], str(pdf), 2)], "ocr")


def test_formatted_text_is_written_rendered(images, ocr_checkpoint, tmp_path):
    """--output page.md / page.html hold the text rendered; an output directory gets .md files, and with
    --render html pages with the input image beside the text."""
    model = ocr_checkpoint.directory
    for name in ("page.md", "page.html"):
        text = run_infer(
            "--image_file",
            images["page"],
            "--ocr_type",
            "format",
            "--output",
            str(tmp_path / name),
            model=model,
            check_exit=0,
        ).stdout[:-1]
    assert (tmp_path / "page.md").read_text() == to_markdown(text) + "\n"
    page = (tmp_path / "page.html").read_text()
    assert page == document_html([(text, images["page"], None)]) and page.count('<img src="data:image/png;base64,') == 1
    for folder, extra in (("md", []), ("html", ["--render", "html"])):
        result = run_infer(
            "--image_file",
            images["page"],
            images["slide"],
            "--ocr_type",
            "format",
            "--output",
            str(tmp_path / folder),
            *extra,
            model=model,
            check_exit=0,
        )
        assert [json.loads(line)["text"] for line in result.stdout.splitlines()][0] == text
    assert sorted(os.listdir(tmp_path / "md")) == ["page.md", "slide.md"]
    assert (tmp_path / "md" / "page.md").read_text() == to_markdown(text) + "\n"
    assert sorted(os.listdir(tmp_path / "html")) == ["page.html", "slide.html"]
    assert (tmp_path / "html" / "page.html").read_text() == page
    assert '<img src="data:image/jpeg;base64,' in (tmp_path / "html" / "slide.html").read_text()


def test_stream_prints_the_same_text(images, ocr_checkpoint, tmp_path):
    plain = run_infer("--image_file", images["slide"], model=ocr_checkpoint.directory, check_exit=0)
    streamed = run_infer(
        "--image_file",
        images["slide"],
        "--stream",
        "--output",
        str(tmp_path / "r.jsonl"),
        model=ocr_checkpoint.directory,
        check_exit=0,
    )
    assert streamed.stdout == plain.stdout
    assert json.loads((tmp_path / "r.jsonl").read_text()) == {"image": images["slide"], "text": plain.stdout[:-1]}


def test_one_bad_file_is_reported_and_the_others_written(images, ocr_checkpoint, tmp_path):
    missing = str(tmp_path / "missing.png")
    result = run_infer(
        "--image_file",
        images["slide"],
        missing,
        "--output",
        str(tmp_path / "r.jsonl"),
        model=ocr_checkpoint.directory,
        check_exit=2,
    )
    assert result.stderr.count("error:") == 1 and f"error: {missing}: no such file." in result.stderr
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["image"] == images["slide"] and record["text"]
    assert json.loads((tmp_path / "r.jsonl").read_text()) == record


# --- bad input: one line on stderr, exit code 2, nothing on stdout ------------------------------------------------


def bad_files(folder):
    """name -> (path, expected message fragment)."""
    import pypdf

    files = {}
    (folder / "empty.png").write_bytes(b"")
    files["empty file"] = ("empty.png", "the file is empty.")
    (folder / "notes.png").write_text("not an image at all")
    files["not an image"] = ("notes.png", "cannot read the image (file is corrupt or not an image).")
    Image.new("RGB", (300, 200), "white").save(folder / "whole.png")
    data = (folder / "whole.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    files["truncated"] = ("truncated.png", "cannot read the image (file is truncated).")
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    files["1x1"] = ("dot.png", "the image is 1x1 pixels, too small to read.")
    Image.new("1", (10000, 9000)).save(folder / "huge.png")
    files["too large"] = ("huge.png", "the image is too large to decode safely.")
    writer = pypdf.PdfWriter()
    writer.add_blank_page(width=200, height=200)
    writer.encrypt("secret")
    with open(folder / "locked.pdf", "wb") as f:
        writer.write(f)
    files["encrypted pdf"] = ("locked.pdf", "cannot open the PDF: it is encrypted.")
    with open(folder / "blank.pdf", "wb") as f:
        pypdf.PdfWriter().write(f)
    files["empty pdf"] = ("blank.pdf", "cannot open the PDF: it is damaged or holds no pages.")
    files["missing"] = ("nowhere.png", "no such file.")
    return files


BAD_FILE_CASES = [
    "empty file",
    "not an image",
    "truncated",
    "1x1",
    "too large",
    "encrypted pdf",
    "empty pdf",
    "missing",
]


@pytest.mark.parametrize("case", BAD_FILE_CASES)
def test_bad_file(case, tmp_path, ocr_checkpoint):
    name, message = bad_files(tmp_path)[case]
    path = str(tmp_path / name)
    result = run_infer("--image_file", path, model=ocr_checkpoint.directory, check_exit=2)
    assert result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == f"error: {path}: {message}"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--box", "[1,2,3]"], "error: Malformed box '[1,2,3]': write it as [x1,y1,x2,y2] in pixels of the image."),
        (["--box", "__import__('os').system('true')"], "error: Malformed box"),
        (["--box", "[0,0,301,10]"], "outside the 300x400 image or empty"),
        (["--color", "purple"], "error: Unknown colour 'purple': choose red, green or blue."),
        (["--color", "red", "--box", "[0,0,10,10]"], "error: Give either a box or a colour, not both."),
        (["--ocr_type", "latex"], "error: Unknown OCR type 'latex': choose ocr or format."),
        (["--dtype", "float16"], "error: float16 needs a GPU: Paddle's CPU kernels have no float16 matmul"),
    ],
)
def test_bad_option(args, message, images, ocr_checkpoint):
    result = run_infer("--image_file", images["page"], *args, model=ocr_checkpoint.directory, check_exit=2)
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]


def test_dtype_bfloat16_on_this_cpu(images, ocr_checkpoint, tmp_path):
    """On a CPU with AMX or AVX512-BF16 the encoder runs on oneDNN's bfloat16 kernels (exported into the cache on
    first use); elsewhere one sentence says why not, before the model is loaded."""
    native = bool(set(BFLOAT16_CPU_FLAGS) & device.cpu_flags())
    result = run_infer(
        "--image_file",
        images["page"],
        "--dtype",
        "bfloat16",
        model=ocr_checkpoint.directory if native else str(tmp_path / "no such model"),
        check_exit=0 if native else 2,
        env={"PADDLE_GOT_CACHE": str(tmp_path / "cache")},
    )
    if native:
        assert result.stdout.strip() and os.listdir(tmp_path / "cache" / "encoders")
    else:
        assert result.stdout == ""
        assert result.stderr.strip().splitlines()[-1] == (
            "error: Precision bfloat16 runs on oneDNN's bfloat16 kernels, which need a CPU with AMX or AVX512-BF16 "
            "(flag amx_bf16 or avx512_bf16 in /proc/cpuinfo), and this one has neither: use float32."
        )


def test_missing_model_says_what_to_download(images):
    result = run_infer("--image_file", images["page"], "--model_name_or_path", "stepfun-ai/GOT-OCR2_0", check_exit=2)
    assert result.stderr.strip() == (
        "error: stepfun-ai/GOT-OCR2_0 is not in the local cache and cannot be downloaded here: on a machine with "
        "network run `huggingface-cli download stepfun-ai/GOT-OCR2_0 --local-dir GOT-OCR2_0`, copy the GOT-OCR2_0 "
        "folder to this machine and pass --model_name_or_path /path/to/GOT-OCR2_0."
    )


def test_output_file_for_several_inputs_is_refused(images, ocr_checkpoint, tmp_path):
    result = run_infer(
        "--image_file",
        images["page"],
        images["slide"],
        "--output",
        str(tmp_path / "all.txt"),
        model=ocr_checkpoint.directory,
        check_exit=2,
    )
    assert "give a directory or a .jsonl file" in result.stderr
    assert not (tmp_path / "all.txt").exists()


# --- argument checks that need no model run before it loads --------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max_new_tokens", "0"], "error: Argument --max_new_tokens: must be at least 1, got 0 (see --help)."),
        (["--max_new_tokens", "-1"], "error: Argument --max_new_tokens: must be at least 1, got -1 (see --help)."),
        (["--num_threads", "0"], "error: Argument --num_threads: must be at least 1, got 0 (see --help)."),
        (["--batch_size", "0"], "error: Argument --batch_size: must be at least 1, got 0 (see --help)."),
        (["--max_new", "3"], "error: Unrecognized arguments: --max_new 3 (see --help)."),
        (["--box", "[200,10,100,50]"], "error: The box [200, 10, 100, 50] is negative, empty or inverted"),
        (["--box", "[0,0,301,10]"], "is outside the 300x400 image or empty"),
        (["--box", "[0,0,30,10]", "--query", "OCR:"], "error: A custom query replaces the box or colour query"),
        (["SECOND", "--stream"], "error: Streaming reads one document at a time: give a single input"),
    ],
    ids=[
        "max_new_tokens_0",
        "max_new_tokens_negative",
        "num_threads_0",
        "batch_size_0",
        "abbreviation",
        "inverted_box",
        "box_outside",
        "query_with_box",
        "stream_several",
    ],
)
def test_bad_arguments_are_refused_before_the_model_loads(args, message, images, tmp_path):
    """The model path does not exist: an error about the argument proves the check ran first."""
    args = [images["slide"] if a == "SECOND" else a for a in args]
    result = run_infer("--image_file", images["page"], *args, model=str(tmp_path / "no_model"), check_exit=2)
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Model directory" not in result.stderr


@pytest.mark.parametrize(
    "relative, message",
    [
        ("absent/dir/x.jsonl", "cannot be written: the directory {tmp}/absent/dir does not exist."),
        ("notes.txt/x.jsonl", "cannot be written: {tmp}/notes.txt is a file, not a directory."),
    ],
)
def test_unwritable_output_is_refused_before_reading(relative, message, images, tmp_path):
    (tmp_path / "notes.txt").write_text("a file")
    output = str(tmp_path / relative)
    result = run_infer(
        "--image_file", images["page"], "--output", output, model=str(tmp_path / "no_model"), check_exit=2
    )
    assert result.stderr.strip() == f"error: --output {output} " + message.format(tmp=tmp_path)
    assert not (tmp_path / "absent").exists()


def test_help_shows_choices_and_defaults():
    result = subprocess.run([sys.executable, INFER, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    assert "--ocr_type {ocr,format}" in help_text and "(default: ocr)" in help_text
    assert "--max_new_tokens MAX_NEW_TOKENS most tokens generated per input (default: 4096)" in help_text
    assert "--color {red,green,blue}" in help_text


def test_repetition_guard_flag_cuts_a_loop_the_plain_run_keeps(ocr_checkpoint, tmp_path):
    """Without the n-gram ban this tiny model loops: the guard ends the text there, a prefix of the plain one."""
    path = picture(tmp_path / "loop.png", 200, 200, 10)
    command = [
        sys.executable,
        INFER,
        "--image_file",
        path,
        "--no_repeat_ngram_size",
        "0",
        "--max_new_tokens",
        "200",
        "--model_name_or_path",
        ocr_checkpoint.directory,
    ]
    plain, guarded = (
        subprocess.run(command + extra, capture_output=True, text=True, timeout=300)
        for extra in ([], ["--repetition_guard"])
    )
    assert plain.returncode == guarded.returncode == 0, guarded.stderr
    assert plain.stdout.startswith(guarded.stdout.rstrip("\n")) and 0 < len(guarded.stdout) < len(plain.stdout)
