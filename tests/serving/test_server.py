"""tools/serve.py as a real server on a free loopback port, driven with the openai client and raw HTTP: answers
equal the reference (and tools/infer.py), streaming equals non-streaming, concurrent equals sequential, every bad
request is a 4xx in OpenAI's error shape, limits, authentication and cancellation."""

import base64
import concurrent.futures
import html
import io
import json
import os
import re
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image

import reference

from paddle_got.processing import OCRRequest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVE = os.path.join(REPO, "tools", "serve.py")
MAX_TOKENS = 24
MODEL = "tiny-got"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A tools/serve.py subprocess on 127.0.0.1; `url` once /health answers."""

    def __init__(self, checkpoint, *args):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            SERVE,
            "--model_name_or_path",
            checkpoint,
            "--served_model_name",
            MODEL,
            "--port",
            str(self.port),
            *args,
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self.process.stderr.read())
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start")

    def stop(self) -> str:
        self.process.terminate()
        _, stderr = self.process.communicate(timeout=60)
        return stderr


@pytest.fixture(scope="module")
def server(ocr_checkpoint):
    running = Server(
        ocr_checkpoint.directory, "--max_rows", "4", "--max_image_pixels", "1000000", "--max_body_bytes", "2000000"
    )
    yield running
    stderr = running.stop()
    assert "Traceback" not in stderr, stderr


def picture(width, height, seed):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(120, 256, (height, width, 3), dtype=np.uint8)
    pixels[height // 3 : height // 3 + 3, width // 8 : width - width // 8] = 20
    return Image.fromarray(pixels)


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def data_url(image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def chat_body(images, text=None, **extra):
    content = [{"type": "image_url", "image_url": {"url": data_url(image)}} for image in images]
    if text is not None:
        content.append({"type": "text", "text": text})
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": MAX_TOKENS, **extra}


@pytest.fixture(scope="module")
def pictures():
    return [picture(300, 400, 1), picture(500, 120, 2), picture(320, 180, 3)]


@pytest.fixture(scope="module")
def endless_picture(ocr_checkpoint):
    """A picture the tiny model reads without ever making an end token (so its requests run until stopped)."""
    from paddle_got import GOT

    ocr = GOT.from_pretrained(ocr_checkpoint.directory)
    for seed in range(10, 60):
        image = picture(200, 200, seed)
        (result,) = ocr.recognize(image, max_new_tokens=1000, no_repeat_ngram_size=0)
        if result.finish_reason == "length":
            return image
    raise AssertionError("no picture keeps the tiny model generating")


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


CASES = [
    ({}, {}, 20),
    ({"ocr_type": "format"}, {"ocr_type": "format"}, 20),
    ({"box": [30, 40, 250, 300]}, {"box": (30, 40, 250, 300)}, 20),
    ({"color": "green", "ocr_type": "format"}, {"color": "green", "ocr_type": "format"}, 20),
    ({"multi_crop": True, "max_crops": 4}, {"multi_crop": True, "max_crops": 4}, 0),
]


@pytest.mark.parametrize("extra, options, ngram", CASES, ids=["plain", "format", "box", "color", "multi_crop"])
def test_openai_client_gets_the_reference_text(extra, options, ngram, client, pictures, ocr_checkpoint):
    body = chat_body([pictures[0]])
    response = client.chat.completions.create(
        model=MODEL, messages=body["messages"], max_tokens=MAX_TOKENS, extra_body=extra
    )
    (expected,) = reference.expected_texts(ocr_checkpoint, [OCRRequest([pictures[0]], **options)], ngram, MAX_TOKENS)
    assert expected and response.choices[0].message.content == expected
    assert response.choices[0].finish_reason in ("stop", "length") and response.model == MODEL
    assert response.usage.completion_tokens > 0 and response.usage.prompt_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_several_images_are_one_multi_page_document(client, pictures, ocr_checkpoint):
    body = chat_body(pictures[:2])
    response = client.chat.completions.create(
        model=MODEL,
        messages=body["messages"],
        max_tokens=MAX_TOKENS,
        extra_body={"multi_page": True, "ocr_type": "format"},
    )
    request = OCRRequest(pictures[:2], ocr_type="format", multi_page=True)
    assert response.choices[0].message.content == reference.expected_texts(ocr_checkpoint, [request], 0, MAX_TOKENS)[0]


def test_text_part_is_the_query(client, pictures, ocr_checkpoint):
    body = chat_body([pictures[2]], text="OCR:")
    response = client.chat.completions.create(model=MODEL, messages=body["messages"], max_tokens=MAX_TOKENS)
    request = OCRRequest([pictures[2]], query="OCR:")
    assert response.choices[0].message.content == reference.expected_texts(ocr_checkpoint, [request], 20, MAX_TOKENS)[0]


def test_streaming_equals_not_streaming(client, pictures):
    messages = chat_body([pictures[1]])["messages"]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=MAX_TOKENS)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=MAX_TOKENS, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and len([c for c in chunks if c.choices]) > 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_markdown_and_html_answers_are_the_rendered_reference_text(server, pictures, ocr_checkpoint, tmp_path):
    from paddle_got.render import to_html, to_markdown

    (expected,) = reference.expected_texts(
        ocr_checkpoint, [OCRRequest([pictures[0]], ocr_type="format")], 20, MAX_TOKENS
    )

    def chat(images, kind, **options):
        body = {**chat_body(images, **options), "response_format": {"type": kind}}
        response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]

    assert chat([pictures[0]], "markdown", ocr_type="format") == to_markdown(expected)
    page = chat([pictures[0]], "html", ocr_type="format")
    assert page == to_html(expected, [pictures[0]]) and page.count('<img src="data:image/png;base64,') == 1
    assert "<script" not in page and html.escape(expected.split()[0]) in page
    plain = chat([pictures[0]], "text")
    assert f'<pre class="plain">{html.escape(plain)}</pre>' in chat([pictures[0]], "html")
    both = chat(pictures[:2], "text", ocr_type="format", multi_page=True)
    document = chat(pictures[:2], "html", ocr_type="format", multi_page=True)
    assert document == to_html(both, pictures[:2]) and document.count("<section ") == 1
    assert document.count('<img src="data:image/png;base64,') == 2

    pdf = tmp_path / "doc.pdf"
    pictures[0].save(pdf, save_all=True, append_images=[pictures[1]])
    answers = {}
    for kind in ("markdown", "html"):
        response = httpx.post(
            server.url + "/v1/ocr",
            files={"file": ("doc.pdf", pdf.read_bytes(), "application/pdf")},
            data={"max_tokens": str(MAX_TOKENS), "ocr_type": "format", "response_format": kind},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        answers[kind] = response.json()
    texts = [result["text"] for result in answers["markdown"]["results"]]
    assert [set(result) & {"markdown", "html"} for result in answers["markdown"]["results"]] == [set(), set()]
    assert answers["markdown"]["markdown"] == to_markdown(texts, "format", [1, 2])
    assert texts[0] and answers["markdown"]["markdown"].count("<!-- page ") == 2
    document = answers["html"]["html"]
    assert "<title>doc.pdf</title>" in document
    assert document.count('<section class="page with-image" aria-label="Page ') == 2
    assert document.count('<img src="data:image/png;base64,') == 2


def test_concurrent_requests_equal_sequential_ones(server, pictures):
    bodies = [
        chat_body([image], ocr_type=kind, max_tokens=tokens)
        for image in pictures
        for kind, tokens in (("ocr", 6), ("format", 30))
    ]
    sequential = [httpx.post(server.url + "/v1/chat/completions", json=b, timeout=120).json() for b in bodies]
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        concurrent_results = list(
            pool.map(lambda b: httpx.post(server.url + "/v1/chat/completions", json=b, timeout=120).json(), bodies)
        )
    contents = [
        [r["choices"][0]["message"]["content"] for r in results] for results in (sequential, concurrent_results)
    ]
    assert contents[0] == contents[1] and len(set(contents[0])) > 1


def test_ocr_route_reads_every_pdf_page_as_infer_does(server, pictures, ocr_checkpoint, tmp_path):
    pdf = tmp_path / "doc.pdf"
    pictures[0].save(pdf, save_all=True, append_images=[pictures[1]])
    response = httpx.post(
        server.url + "/v1/ocr",
        files={"file": ("doc.pdf", pdf.read_bytes(), "application/pdf")},
        data={"max_tokens": str(MAX_TOKENS), "ocr_type": "format"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    printed = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "infer.py"),
            "--image_file",
            str(pdf),
            "--ocr_type",
            "format",
            "--max_new_tokens",
            str(MAX_TOKENS),
            "--model_name_or_path",
            ocr_checkpoint.directory,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    expected = [json.loads(line) for line in printed.stdout.splitlines()]
    assert [(r["page"], r["text"]) for r in results] == [(e["page"], e["text"]) for e in expected]


def metric(server, name) -> int:
    """The value of `paddle_got_<name>` in the server's Prometheus text."""
    text = httpx.get(server.url + "/metrics").text
    return int(re.search(rf"^paddle_got_{name} (\d+)$", text, flags=re.M).group(1))


def test_health_models_and_metrics(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert httpx.get(server.url + "/v1/models").json()["data"][0]["id"] == MODEL
    metrics = httpx.get(server.url + "/metrics").text
    for name in (
        "requests_total",
        "generated_tokens_total",
        "queue_depth",
        "running_rows",
        "prefill_seconds_total",
        "decode_steps_total",
    ):
        assert f"\n# TYPE paddle_got_{name} " in "\n" + metrics
    assert metric(server, "requests_total") > 0
    assert metric(server, "prefills_total") >= metric(server, "requests_total")
    assert metric(server, "decode_rows_total") >= metric(server, "decode_steps_total") > 0


# --- bad requests: a 4xx with one sentence in OpenAI's error shape, and the server keeps serving ---------------


def bad_requests(pictures):
    good = chat_body([pictures[0]])
    not_image = "data:image/png;base64," + base64.b64encode(b"this is not an image").decode()
    huge = Image.new("RGB", (1200, 1000), "white")  # 1.2 M pixels (a small PNG), over the limit of 1 M
    text_only = {"model": MODEL, "messages": [{"role": "user", "content": "read this"}]}
    return {
        "malformed JSON": (b"{not json", 400, "The request body is not valid JSON."),
        "no image": (text_only, 400, "The user message holds no image: send an image_url content part."),
        "bad base64": (
            {
                **good,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}],
                    }
                ],
            },
            400,
            "The image data URL holds invalid base64.",
        ),
        "not an image": (
            {
                **good,
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": not_image}}]}],
            },
            400,
            "the image: cannot read the image (file is corrupt or not an image).",
        ),
        "unknown mode": ({**good, "ocr_type": "latex"}, 400, "Unknown OCR type 'latex': choose ocr or format."),
        "malformed box": ({**good, "box": "[1,2,3]"}, 400, "Malformed box '[1,2,3]'"),
        "box outside": ({**good, "box": [0, 0, 301, 10]}, 400, "is outside the 300x400 image or empty"),
        "inverted box": ({**good, "box": [50, 10, 20, 30]}, 400, "is negative, empty or inverted"),
        "image too large": (chat_body([huge]), 413, "too large"),
        "body too large": ({**good, "padding": "x" * 2_100_000}, 413, "more than the server's limit of 2000000"),
        "several images": (chat_body(pictures[:2]), 400, "several images are read as one document only with"),
        "unknown model": ({**good, "model": "gpt-4o"}, 404, "The model 'gpt-4o' does not exist"),
        "remote image": (
            {
                **good,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}],
                    }
                ],
            },
            400,
            "Remote image URLs are off on this server",
        ),
        "local path": (
            {
                **good,
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}],
            },
            400,
            "Local image paths are off",
        ),
        "zero max_tokens": ({**good, "max_tokens": 0}, 400, "max_tokens must be a whole number of at least 1."),
        "json response_format": (
            {**good, "response_format": {"type": "json_object"}},
            400,
            "response_format must be one of text, markdown, html, got 'json_object'.",
        ),
        "stream as html": (
            {**good, "stream": True, "response_format": {"type": "html"}},
            400,
            "A html answer is rendered from the whole text: ask for it without stream.",
        ),
    }


BAD_CASES = [
    "malformed JSON",
    "no image",
    "bad base64",
    "not an image",
    "unknown mode",
    "malformed box",
    "box outside",
    "inverted box",
    "image too large",
    "body too large",
    "several images",
    "unknown model",
    "remote image",
    "local path",
    "zero max_tokens",
    "json response_format",
    "stream as html",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_request_is_one_sentence_in_openai_shape(case, server, pictures):
    body, status, message = bad_requests(pictures)[case]
    send = dict(content=body) if isinstance(body, bytes) else dict(json=body)
    response = httpx.post(server.url + "/v1/chat/completions", timeout=60, **send)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and "\n" not in error["message"] and error["type"]
    assert "Traceback" not in response.text
    assert (
        httpx.post(
            server.url + "/v1/chat/completions", json=chat_body([pictures[2]], max_tokens=2), timeout=60
        ).status_code
        == 200
    )


def test_unknown_route_and_bad_upload(server):
    assert httpx.get(server.url + "/v2/nothing").json()["error"]["message"] == "There is no route /v2/nothing."
    response = httpx.post(server.url + "/v1/ocr", files={"file": ("x.png", b"not an image", "image/png")})
    assert response.status_code == 400 and "cannot read the image" in response.json()["error"]["message"]


def test_api_key_is_required_except_for_health(ocr_checkpoint, pictures):
    secured = Server(ocr_checkpoint.directory, "--api_key", "s3cret")
    try:
        from openai import AuthenticationError, OpenAI

        messages = chat_body([pictures[2]])["messages"]
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=secured.url + "/v1", api_key="wrong", max_retries=0).chat.completions.create(
                model=MODEL, messages=messages, max_tokens=2
            )
        assert httpx.get(secured.url + "/v1/models").status_code == 401
        assert httpx.get(secured.url + "/health").status_code == 200
        response = OpenAI(base_url=secured.url + "/v1", api_key="s3cret", max_retries=0).chat.completions.create(
            model=MODEL, messages=messages, max_tokens=2
        )
        assert response.choices[0].message.content is not None
    finally:
        secured.stop()


def running_rows(server) -> int:
    return metric(server, "running_rows")


def test_full_queue_is_503_and_a_client_that_leaves_frees_its_row(ocr_checkpoint, pictures, endless_picture):
    """One row, one waiting place: a third request is refused with Retry-After; closing the streams cancels."""
    small = Server(ocr_checkpoint.directory, "--max_rows", "1", "--max_waiting", "1")
    try:
        long = chat_body([endless_picture], max_tokens=100000, no_repeat_ngram_size=0, stream=True)
        with httpx.Client(timeout=60) as first, httpx.Client(timeout=60) as second:
            with first.stream("POST", small.url + "/v1/chat/completions", json=long) as running:
                lines = running.iter_lines()  # kept: dropping the iterator would close the stream
                assert next(lines).startswith("data: ")
                with second.stream("POST", small.url + "/v1/chat/completions", json=long) as waiting:
                    assert waiting.status_code == 200
                    refused = httpx.post(small.url + "/v1/chat/completions", json=chat_body([pictures[1]]), timeout=60)
                    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
                    assert "try again later" in refused.json()["error"]["message"]
                    assert running_rows(small) == 1
        deadline = time.time() + 30
        while running_rows(small) and time.time() < deadline:
            time.sleep(0.1)
        assert running_rows(small) == 0 and metric(small, "queue_depth") == 0
        assert metric(small, "generated_tokens_total") < 10000  # stopped long before max_tokens
        after = httpx.post(small.url + "/v1/chat/completions", json=chat_body([pictures[1]]), timeout=60)
        assert after.status_code == 200
    finally:
        small.stop()


def test_request_over_the_time_limit_is_504(ocr_checkpoint, pictures, endless_picture):
    slow = Server(ocr_checkpoint.directory, "--request_timeout", "0.5")
    try:
        body = chat_body([endless_picture], max_tokens=100000, no_repeat_ngram_size=0)
        response = httpx.post(slow.url + "/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == 504
        assert response.json()["error"]["message"] == "The request took longer than the server's limit of 0.5 s."
        assert (
            httpx.post(
                slow.url + "/v1/chat/completions", json=chat_body([pictures[1]], max_tokens=2), timeout=60
            ).status_code
            == 200
        )
    finally:
        slow.stop()


def test_readme_serving_examples_run_as_written(ocr_checkpoint):
    """The README's curl and openai examples, pointed at a server with the default limits."""
    server = Server(ocr_checkpoint.directory)
    try:
        check_readme_examples(server)
    finally:
        server.stop()


def check_readme_examples(server):
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme[readme.index("## Serving") : readme.index("\n## ", readme.index("## Serving") + 5)]
    curl = next(line for line in section.splitlines() if line.startswith("curl "))
    printed = subprocess.run(
        curl.replace("http://127.0.0.1:8000", server.url).split(), capture_output=True, text=True, timeout=300, cwd=REPO
    )
    results = json.loads(printed.stdout)["results"]  # the demo PDF's two pages
    assert [r["page"] for r in results] == [1, 2] and all(isinstance(r["text"], str) for r in results)
    snippet = re.search(r"```python\n(.*?)\n```", section, flags=re.S).group(1)
    snippet = snippet.replace("http://127.0.0.1:8000", server.url).replace('"GOT-OCR2_0"', repr(MODEL))
    snippet = snippet.replace("max_tokens=4096", f"max_tokens={MAX_TOKENS}")
    ran = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip()
