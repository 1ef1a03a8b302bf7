"""What the server asks of the library: images from request bytes, OCR jobs onto the engine, results and streams.

The HTTP layer (`api.py`) only translates; everything that reads images, checks options or talks to the engine is
here, with the server's limits (`ServingLimits`). Jobs are read exactly as `GOT.iter_recognize` reads them: the
same prompts, the same n-gram default, the same decoding, so a served answer equals what `tools/infer.py` prints.
"""

import asyncio
import base64
import binascii
import io
import os
import threading
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from PIL import Image

from ..constants import MAX_CROPS, MAX_NEW_TOKENS
from ..engine import Engine, RequestHandle
from ..errors import BadInputError, GOTError, RequestError
from ..inputs import MAX_IMAGE_PIXELS, InputImage, decode_image, render_pdf_bytes
from ..pipeline import GOT, OCRResult, TextStreamer, check_read_options, default_ngram_size
from ..processing import check_box_inside, read_options

PDF_MAGIC = b"%PDF"


@dataclass
class ServingLimits:
    """The server's limits: request body bytes, pixels per image, pages per PDF, seconds per request, and where
    images may come from besides `data:` URLs."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_pdf_pages: int = 50
    request_timeout: float = 600.0
    allowed_local_dir: Optional[str] = None
    allow_remote_images: bool = False


@dataclass
class OCRJob:
    """One document to read: its images (one, or the pages of a multi-page document) and the reading options."""

    images: List[Image.Image]
    ocr_type: str = "ocr"
    box: Optional[Sequence[float]] = None
    color: Optional[str] = None
    multi_crop: bool = False
    max_crops: int = MAX_CROPS
    multi_page: bool = False
    query: Optional[str] = None
    max_new_tokens: int = MAX_NEW_TOKENS
    no_repeat_ngram_size: Optional[int] = None
    repetition_guard: bool = False

    def check(self) -> None:
        """RequestError (400) for options that cannot work together or a box outside its image."""
        try:
            check_read_options(**read_options(self), max_new_tokens=self.max_new_tokens)
            if not self.images:
                raise BadInputError("The request holds no image.")
            if len(self.images) > 1 and not self.multi_page:
                raise BadInputError(
                    f"The request holds {len(self.images)} images: several images are read as one "
                    "document only with multi_page (or send them one per request)."
                )
            if self.box is not None:
                check_box_inside(self.box, *self.images[0].size)
        except GOTError as err:
            raise RequestError(str(err)) from err


class OCRService:
    """A loaded GOT and the engine that serves it (started on a background thread)."""

    def __init__(
        self,
        ocr: GOT,
        limits: ServingLimits,
        max_rows: int = 8,
        max_waiting: int = 64,
        max_cached_tokens: Optional[int] = None,
        fixed_batches: bool = False,
    ):
        self.ocr = ocr
        self.limits = limits
        self.engine = Engine(
            ocr.model,
            max_rows=max_rows,
            max_waiting=max_waiting,
            max_cached_tokens=max_cached_tokens,
            fixed_batches=fixed_batches,
        )
        self.lock = threading.Lock()
        self.counters = {"requests": 0, "failed_requests": 0, "prompt_tokens": 0, "generated_tokens": 0}

    def start(self) -> None:
        """Start the engine thread."""
        self.engine.start()

    def stop(self) -> None:
        """Stop the engine thread (running requests are cancelled)."""
        self.engine.stop()

    # --- images ----------------------------------------------------------------------------------------------

    def image_from_bytes(self, data: bytes, name: str) -> Image.Image:
        """Decode image bytes (RequestError 400 for what is not an image, 413 for one over the pixel limit)."""
        if not data:
            raise RequestError(f"{name}: the image is empty.")
        try:
            return decode_image(io.BytesIO(data), name, self.limits.max_image_pixels)
        except BadInputError as err:
            status = 413 if "too large" in str(err) else 400
            raise RequestError(str(err), status) from err

    def pages_from_upload(self, data: bytes, name: str) -> List[Image.Image]:
        """An uploaded file as page images: every page of a PDF, or the one image."""
        if data.startswith(PDF_MAGIC):
            try:
                return render_pdf_bytes(data, name, self.limits.max_pdf_pages, self.limits.max_image_pixels)
            except BadInputError as err:
                status = 413 if "more than the limit" in str(err) or "too large" in str(err) else 400
                raise RequestError(str(err), status) from err
        return [self.image_from_bytes(data, name)]

    def image_from_url(self, url: str) -> Image.Image:
        """An `image_url` part: a `data:` URL, a local file under the allowed directory, or (if allowed) http(s)."""
        if url.startswith("data:"):
            header, _, payload = url.partition(",")
            if ";base64" not in header:
                raise RequestError("An image data URL must be base64-encoded (data:image/png;base64,...).")
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError) as err:
                raise RequestError("The image data URL holds invalid base64.") from err
            return self.image_from_bytes(data, "the image")
        if url.startswith(("http://", "https://")):
            if not self.limits.allow_remote_images:
                raise RequestError(
                    "Remote image URLs are off on this server (start it with --allow_remote_images), "
                    "send the image as a data: URL."
                )
            return self.image_from_bytes(self._fetch(url), url)
        return self.image_from_bytes(self._read_local(url), url)

    def _read_local(self, url: str) -> bytes:
        path = url[len("file://") :] if url.startswith("file://") else url
        allowed = self.limits.allowed_local_dir
        if allowed is None:
            raise RequestError(
                "Local image paths are off on this server (start it with --allowed_local_dir), send "
                "the image as a data: URL."
            )
        real, root = os.path.realpath(path), os.path.realpath(allowed)
        if os.path.commonpath([real, root]) != root:
            raise RequestError(f"{path} is outside the directory this server may read ({allowed}).", 403)
        if not os.path.isfile(real):
            raise RequestError(f"{path}: no such file.", 404)
        if os.path.getsize(real) > self.limits.max_body_bytes:
            raise RequestError(f"{path} is larger than the server's limit of {self.limits.max_body_bytes} bytes.", 413)
        with open(real, "rb") as f:
            return f.read()

    def _fetch(self, url: str) -> bytes:
        import httpx

        try:
            with httpx.stream("GET", url, timeout=30, follow_redirects=True) as response:
                response.raise_for_status()
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > self.limits.max_body_bytes:
                        raise RequestError(
                            f"{url} is larger than the server's limit of {self.limits.max_body_bytes} bytes.", 413
                        )
                return bytes(data)
        except httpx.HTTPError as err:
            raise RequestError(f"Cannot fetch {url}: {err}.") from err

    # --- jobs ------------------------------------------------------------------------------------------------

    def submit(
        self,
        job: OCRJob,
        on_text: Optional[Callable[[str], None]] = None,
        on_finish: Optional[Callable[[RequestHandle], None]] = None,
    ) -> "RunningJob":
        """Queue a checked job on the engine; `on_text(piece)` receives the text as it is generated.

        RequestError 503 when the queue is full, 400 when the job cannot fit the cache at all.
        """
        job.check()
        ngram = job.no_repeat_ngram_size
        if ngram is None:
            ngram = default_ngram_size(job.multi_crop, job.multi_page)
        options = read_options(job)
        document = [InputImage(f"<image {index}>", image=image) for index, image in enumerate(job.images)]
        result, request = self.ocr.prepare_document(document, options, job.max_new_tokens, ngram, job.repetition_guard)
        if request is None:
            raise RequestError(result.error)
        streamer = TextStreamer(self.ocr.processor.tokenizer, on_text) if on_text is not None else None
        try:
            handle = self.engine.submit(request, on_token=streamer.put if streamer else None, on_finish=on_finish)
        except GOTError as err:
            status = 503 if "try again later" in str(err) else 400
            raise RequestError(str(err), status) from err
        return RunningJob(self, result, handle, streamer)

    def record(self, job: "RunningJob") -> None:
        """Count a finished job in the metrics."""
        with self.lock:
            self.counters["requests"] += 1
            self.counters["failed_requests"] += job.result.error is not None
            self.counters["prompt_tokens"] += job.handle.prompt_tokens
            self.counters["generated_tokens"] += len(job.handle.tokens)


class RunningJob:
    """A job on the engine: `result` is filled (text or error, finish reason, token counts) once it finishes."""

    def __init__(self, service: OCRService, result: OCRResult, handle: RequestHandle, streamer: Optional[TextStreamer]):
        self.service = service
        self.result = result
        self.handle = handle
        self.streamer = streamer

    def complete(self) -> OCRResult:
        """Fill and return the result of the finished handle; a stream's last piece is
        `result.text[streamer.written:]`, for the caller to send."""
        self.service.ocr.finish_result(self.result, self.handle)
        self.service.record(self)
        return self.result

    async def wait(self, is_disconnected: Callable, timeout: float) -> OCRResult:
        """Wait for the job without blocking the event loop; cancel it when the client leaves or time runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.handle.finished:
            if await is_disconnected():
                self.handle.cancel()
                raise asyncio.CancelledError()
            if loop.time() > deadline:
                self.handle.cancel()
                raise RequestError(f"The request took longer than the server's limit of {timeout:g} s.", 504)
            await asyncio.to_thread(self.handle.wait, 0.1)
        return self.complete()
