"""The HTTP layer: OpenAI-compatible chat completions, a multipart OCR route, health, models and metrics.

It only translates: request bodies into `OCRJob`s for the `OCRService`, results and streams into OpenAI's shapes,
every failure into a 4xx/5xx with one sentence in OpenAI's error shape (never a traceback).

    POST /v1/chat/completions   messages with image_url parts (+ GOT options as extra fields), stream or not
    POST /v1/ocr                multipart: file (image or PDF) + form fields; JSON results per page
    GET  /health                no authentication
    GET  /v1/models, /metrics   (Prometheus text)
"""

import asyncio
import hmac
import json
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, Dict, List, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import GOTError, RequestError
from ..logger import logger
from ..processing import parse_box
from ..render import to_html, to_markdown
from .service import OCRJob, OCRService, RunningJob

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    411: "invalid_request_error",
    413: "request_too_large",
    503: "server_overloaded",
    504: "timeout",
}
BOOLEAN_FIELDS = ("multi_crop", "multi_page", "repetition_guard", "stream")
RESPONSE_FORMATS = ("text", "markdown", "html")


def error_response(status: int, message: str, param: Optional[str] = None) -> JSONResponse:
    """OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`; 503 says when to retry."""
    body = {
        "error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param, "code": status}
    }
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than `limit` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"The request body is {declared} bytes, more than the server's limit of {limit}.", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(f"The request body is more than the server's limit of {limit} bytes.", 413)
    return bytes(body)


def parse_options(fields: Dict[str, Any]) -> Dict[str, Any]:
    """GOT's reading options from request fields (JSON values, or strings from a form) as OCRJob keywords."""
    options: Dict[str, Any] = {}
    for name in ("ocr_type", "color", "query"):
        value = fields.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise RequestError(f"{name} must be a string.", param=name)
            options[name] = value
    for name in BOOLEAN_FIELDS[:3]:
        if fields.get(name) is not None:
            options[name] = parse_bool(fields[name], name)
    for field_name, option in (
        ("max_crops", "max_crops"),
        ("max_tokens", "max_new_tokens"),
        ("max_completion_tokens", "max_new_tokens"),
        ("no_repeat_ngram_size", "no_repeat_ngram_size"),
    ):
        if fields.get(field_name) is not None:
            options[option] = parse_int(fields[field_name], field_name, minimum=0 if option.startswith("no_") else 1)
    box = fields.get("box")
    if box is not None:
        try:
            options["box"] = parse_box(box) if isinstance(box, str) else tuple(float(v) for v in box)
        except (TypeError, ValueError) as err:
            raise RequestError("box must be [x1, y1, x2, y2] in pixels of the image.", param="box") from err
        except GOTError as err:  # parse_box's sentence says what is wrong
            raise RequestError(str(err), param="box") from err
    return options


def parse_response_format(value) -> str:
    """`text` (GOT's own output), `markdown` or `html` from OpenAI's `response_format` ({"type": ...} or a string)."""
    kind = value.get("type") if isinstance(value, dict) else value
    if kind is None:
        return "text"
    if kind not in RESPONSE_FORMATS:
        raise RequestError(
            f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {kind!r}.", param="response_format"
        )
    return kind


def rendered(text, response_format: str, ocr_type: str, images=None, page_numbers=None, title=None) -> str:
    """Markdown or a self-contained HTML page (the page images beside the text) of one text, or of a list of
    pages (one section each, see paddle_got.render); formatted text rendered, plain text shown as read."""
    if response_format == "markdown":
        return to_markdown(text, ocr_type, page_numbers)
    return to_html(text, images, title, ocr_type, page_numbers)


def parse_bool(value, name: str) -> bool:
    """A JSON boolean, or a form's true/false/1/0."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise RequestError(f"{name} must be true or false.", param=name)


def parse_int(value, name: str, minimum: int) -> int:
    """A whole number of at least `minimum` (JSON number or form string)."""
    try:
        number = int(value) if not isinstance(value, bool) and float(value) == int(float(value)) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum:
        raise RequestError(f"{name} must be a whole number of at least {minimum}.", param=name)
    return number


def user_parts(body: Dict[str, Any]):
    """`(image URLs, text)` of the last user message of a chat request."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list.", param="messages")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise RequestError("messages holds no user message.", param="messages")
    content = users[-1].get("content")
    if isinstance(content, str):
        raise RequestError("The user message holds no image: send an image_url content part.", param="messages")
    if not isinstance(content, list):
        raise RequestError("The user message content must be a list of parts.", param="messages")
    urls, texts = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if not isinstance(url, str) or not url:
                raise RequestError("An image_url part needs a url.", param="messages")
            urls.append(url)
        elif kind == "text":
            if not isinstance(part.get("text"), str):
                raise RequestError("A text part needs a text string.", param="messages")
            texts.append(part["text"])
        else:
            raise RequestError(f"Unknown content part {kind!r}: send image_url and text parts.", param="messages")
    if not urls:
        raise RequestError("The user message holds no image: send an image_url content part.", param="messages")
    text = "".join(texts).strip()
    return urls, text or None


def usage(job: RunningJob) -> Dict[str, int]:
    """OpenAI's usage block for a finished job."""
    prompt, completion = job.handle.prompt_tokens, len(job.handle.tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class BearerAuth:
    """ASGI middleware: every route but /health needs `Authorization: Bearer <api_key>` (401 otherwise).

    A plain ASGI wrapper rather than Starlette's BaseHTTPMiddleware, which would also wrap `receive` and make a
    streaming response see a disconnect that never happened.
    """

    def __init__(self, app, api_key: str, rejected: Dict[str, int]):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.rejected = rejected

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] != "/health":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                self.rejected["count"] += 1
                response = error_response(401, "A valid API key is required: send Authorization: Bearer <key>.")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(service: OCRService, model_name: str, api_key: Optional[str] = None) -> FastAPI:
    """The FastAPI application serving `service` as `model_name`; `api_key` (if set) is required as a bearer
    token on every route but /health. The engine runs while the application does."""

    @asynccontextmanager
    async def lifespan(app):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="paddle_got", lifespan=lifespan, docs_url=None, redoc_url=None)
    limits = service.limits
    rejected = {"count": 0}

    if api_key:
        app.add_middleware(BearerAuth, api_key=api_key, rejected=rejected)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, err: RequestError):
        rejected["count"] += 1
        return error_response(err.status, str(err), err.param)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError):
        rejected["count"] += 1
        return error_response(400, "The request is malformed.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        rejected["count"] += 1
        message = {
            404: f"There is no route {request.url.path}.",
            405: f"{request.method} is not allowed on {request.url.path}.",
        }.get(err.status_code, str(err.detail))
        return error_response(err.status_code, message)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, err: Exception):
        logger.warning(f"Request to {request.url.path} failed: {err!r}")
        return error_response(500, "The server failed to handle the request; it keeps serving others.")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "paddle_got"}],
        }

    @app.get("/metrics")
    async def metrics():
        stats = service.engine.stats()
        with service.lock:
            counters = dict(service.counters)
        lines = []
        for name, kind, value, text in (
            ("requests_total", "counter", counters["requests"], "OCR jobs finished"),
            ("failed_requests_total", "counter", counters["failed_requests"], "OCR jobs that ended in an error"),
            ("rejected_requests_total", "counter", rejected["count"], "HTTP requests refused with an error status"),
            ("prompt_tokens_total", "counter", counters["prompt_tokens"], "Prompt tokens of finished jobs"),
            ("generated_tokens_total", "counter", counters["generated_tokens"], "Tokens generated"),
            ("queue_depth", "gauge", stats["waiting"], "Requests waiting for a row"),
            ("running_rows", "gauge", stats["running"], "Requests being generated"),
            ("prefills_total", "counter", stats["prefills"], "Requests prefilled (images encoded, prompt run)"),
            ("prefill_seconds_total", "counter", stats["prefill_seconds"], "Time spent in prefills"),
            ("decode_steps_total", "counter", stats["decode_steps"], "Decode steps over the running rows"),
            ("decode_seconds_total", "counter", stats["decode_seconds"], "Time spent in decode steps"),
            ("decode_rows_total", "counter", stats["decode_rows"], "Rows summed over the decode steps"),
        ):
            lines += [
                f"# HELP paddle_got_{name} {text}.",
                f"# TYPE paddle_got_{name} {kind}",
                f"paddle_got_{name} {value}",
            ]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    def check_model(body: Dict[str, Any]) -> None:
        requested = body.get("model")
        if requested is not None and requested != model_name:
            raise RequestError(
                f"The model {requested!r} does not exist: this server serves {model_name!r}.", 404, "model"
            )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        raw = await read_body(request, limits.max_body_bytes)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError("The request body is not valid JSON.") from err
        if not isinstance(body, dict):
            raise RequestError("The request body must be a JSON object.")
        check_model(body)
        stream = parse_bool(body["stream"], "stream") if body.get("stream") is not None else False
        response_format = parse_response_format(body.get("response_format"))
        if stream and response_format != "text":
            raise RequestError(
                f"A {response_format} answer is rendered from the whole text: ask for it without stream.",
                param="response_format",
            )
        urls, text = user_parts(body)
        options = parse_options(body)
        if text is not None:
            options.setdefault("query", text)
        images = await asyncio.to_thread(lambda: [service.image_from_url(url) for url in urls])
        job_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: Dict[str, Any], finish_reason: Optional[str] = None) -> str:
            payload = {
                "id": job_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        if not stream:
            reading = OCRJob(images, **options)
            job = service.submit(reading)
            try:
                result = await job.wait(request.is_disconnected, limits.request_timeout)
            except asyncio.CancelledError:
                return Response(status_code=499)
            if result.error is not None:
                raise RequestError(result.error, 500)
            content = result.text
            if response_format != "text":  # a document read from several images has them all beside its text
                content = rendered(result.text, response_format, reading.ocr_type, images)
            return {
                "id": job_id,
                "object": "chat.completion",
                "created": created,
                "model": model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": result.finish_reason,
                    }
                ],
                "usage": usage(job),
            }

        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        job = service.submit(
            OCRJob(images, **options),
            on_text=lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, piece),
            on_finish=lambda handle: loop.call_soon_threadsafe(pieces.put_nowait, None),
        )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events():
            try:
                yield chunk({"role": "assistant", "content": ""})
                deadline = loop.time() + limits.request_timeout
                while True:
                    try:
                        piece = await asyncio.wait_for(pieces.get(), max(deadline - loop.time(), 0.001))
                    except asyncio.TimeoutError:
                        job.handle.cancel()
                        message = f"The request took longer than the server's limit of {limits.request_timeout:g} s."
                        yield f"data: {json.dumps({'error': {'message': message, 'type': 'timeout', 'code': 504}})}\n\n"
                        yield "data: [DONE]\n\n"
                        return
                    if piece is None:
                        break
                    yield chunk({"content": piece})
                result = job.complete()
                if result.error is not None:
                    yield f"data: {json.dumps({'error': {'message': result.error, 'type': 'server_error'}})}\n\n"
                else:
                    rest = result.text[job.streamer.written :]
                    if rest:
                        yield chunk({"content": rest})
                    yield chunk({}, result.finish_reason)
                    if include_usage:
                        payload = {
                            "id": job_id,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model_name,
                            "choices": [],
                            "usage": usage(job),
                        }
                        yield f"data: {json.dumps(payload)}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                if not job.handle.finished:
                    job.handle.cancel()  # the client went away: free the row

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/ocr")
    async def ocr(request: Request):
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise RequestError("Send the file as multipart/form-data with a 'file' field.")
        declared = request.headers.get("content-length", "")
        if not declared.isdigit():
            raise RequestError("An upload needs a Content-Length header.", 411)
        if int(declared) > limits.max_body_bytes:
            raise RequestError(
                f"The upload is {declared} bytes, more than the server's limit of {limits.max_body_bytes}.", 413
            )
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise RequestError("The form needs a 'file' field holding an image or a PDF.", param="file")
        data, name = await upload.read(), upload.filename or "the upload"
        options = parse_options({key: value for key, value in form.items() if key not in ("file", "response_format")})
        response_format = parse_response_format(form.get("response_format"))
        pages = await asyncio.to_thread(service.pages_from_upload, data, name)
        if options.get("multi_page"):
            documents: List[List] = [pages]
        else:
            documents = [[page] for page in pages]
        jobs = [OCRJob(document, **options) for document in documents]
        for job in jobs:
            job.check()
        running: List[RunningJob] = []
        try:
            for job in jobs:
                running.append(service.submit(job))
            results = []
            for index, job in enumerate(running):
                result = await job.wait(request.is_disconnected, limits.request_timeout)
                page = None if options.get("multi_page") or len(pages) == 1 else index + 1
                entry = {"page": page, "finish_reason": result.finish_reason, "usage": usage(job)}
                entry.update({"error": result.error} if result.error is not None else {"text": result.text})
                results.append(entry)
        except asyncio.CancelledError:
            return Response(status_code=499)
        finally:
            for job in running:
                if not job.handle.finished:
                    job.handle.cancel()
        answer = {"model": model_name, "file": name, "results": results}
        read = [(entry, document) for entry, document in zip(results, documents, strict=True) if "text" in entry]
        if response_format != "text" and read:  # the whole file as one document: a section per page read
            answer[response_format] = rendered(
                [entry["text"] for entry, _ in read],
                response_format,
                jobs[0].ocr_type,
                [document for _, document in read],
                [entry["page"] for entry, _ in read],
                name,
            )
        return answer

    return app
