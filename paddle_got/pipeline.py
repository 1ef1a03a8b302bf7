"""GOT: the high-level API that `tools/infer.py` calls. Files in, text out, one result per input.

    ocr = GOT.from_pretrained("stepfun-ai/GOT-OCR2_0")        # or a local directory in any layout
    for result in ocr.recognize(["page.png", "doc.pdf"], ocr_type="format", batch_size=4):
        print(result.image, result.page, result.text)

Inputs are image files, directories of images, PDFs (one input per page) or PIL images. A bad input becomes a
result with `error` set; the others are still read.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import paddle

from .constants import IMG_PAD, MAX_CROPS, MAX_NEW_TOKENS, NO_REPEAT_NGRAM_SIZE
from .device import gpu_compute_capability, resolve_dtype, set_cpu_threads
from .engine import ERROR, Engine, GenerationRequest, RequestHandle
from .errors import BadInputError, GOTError
from .export import check_bfloat16_cpu, checkpoint_export_dir, run_in_bfloat16
from .hub import DEFAULT_MODEL, resolve_model_path
from .inputs import ImageInput, InputImage, document_error, expand_inputs, load_input
from .kernels import decode_cpu
from .logger import logger
from .modeling.got import GOTQwenForCausalLM
from .processing import GOTProcessor, OCRRequest, validate_options


@dataclass
class OCRResult:
    """The text read from one input (`image` is its path or `<image N>`; `page` is 1-based for PDF pages).

    `finish_reason` (stop, length, repetition) and `new_tokens` say how generation ended.
    """

    image: str
    text: Optional[str] = None
    page: Optional[int] = None
    error: Optional[str] = None
    finish_reason: Optional[str] = None
    new_tokens: int = 0

    def to_dict(self) -> dict:
        """`{"image", "text"}`, plus `"page"` for a PDF page and `"error"` for a failed input."""
        record = {"image": self.image}
        if self.page is not None:
            record["page"] = self.page
        if self.error is None:
            record["text"] = self.text
        else:
            record["error"] = self.error
        return record


class TextStreamer:
    """Writes the decoded text as tokens arrive, exactly as the final stripped text will read.

    Leading whitespace is never written, trailing whitespace and incomplete UTF-8 are held back until more text
    follows; `finish()` writes what is left, so the pieces add up to exactly the result's text.
    """

    def __init__(self, tokenizer, write: Callable[[str], None]):
        self.tokenizer = tokenizer
        self.write = write
        self.tokens: List[int] = []
        self.written = 0

    def put(self, token: int) -> None:
        """Take one generated token and write whatever text became final."""
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens).lstrip()
        if text.endswith("\ufffd"):
            return
        self._write_upto(text.rstrip())

    def finish(self, final_text: str) -> None:
        """Write the rest of `final_text` (the stripped result)."""
        self._write_upto(final_text)

    def _write_upto(self, text: str) -> None:
        if len(text) > self.written:
            self.write(text[self.written :])
            self.written = len(text)


def check_read_options(max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = 1, **options) -> None:
    """GOTError for reading options that cannot work together (checked before any model or image is loaded);
    `options` are `validate_options`' keyword arguments."""
    validate_options(**options)
    if batch_size < 1:
        raise GOTError("batch_size must be at least 1.")
    if max_new_tokens < 1:
        raise GOTError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")


def default_ngram_size(multi_crop: bool, multi_page: bool) -> int:
    """The reference's n-gram ban: 20, off (0) for multi-crop and multi-page."""
    return 0 if (multi_crop or multi_page) else NO_REPEAT_NGRAM_SIZE


def check_stream(num_documents: int) -> None:
    """GOTError unless there is exactly one document to stream."""
    if num_documents != 1:
        raise GOTError("Streaming reads one document at a time: give a single input (or use multi-page).")


class GOT:
    """GOT-OCR2.0 ready to read: a model, its processor, and the generation settings of the reference."""

    def __init__(self, model: GOTQwenForCausalLM, processor: GOTProcessor):
        self.model = model
        self.processor = processor

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_MODEL,
        dtype: str = "auto",
        num_threads: Optional[int] = None,
        source: Optional[str] = None,
        bfloat16_decode_weights: Optional[bool] = None,
    ) -> "GOT":
        """Load a checkpoint directory (any layout) or hub id; `dtype` auto picks bf16/fp16 on GPU, fp32 on CPU.

        `source` is where a hub id is fetched from: huggingface (default), modelscope or aistudio (paddle_got.hub).
        On CPU a checkpoint stored in bfloat16 (the release is) keeps its decoder weights in bfloat16 for our decode
        kernels, which widen them exactly (half the reads per token); `bfloat16_decode_weights` False keeps them in
        float32, True forces it (rounding a float32 checkpoint).
        `dtype` bfloat16 on a CPU (one with AMX or AVX512-BF16; ExportError elsewhere) also runs the encoder on
        oneDNN's bfloat16 kernels through Paddle Inference, from `<checkpoint>/inference` or an export made into the
        cache on first use (`export.checkpoint_export_dir`), and a prompt's products in bfloat16 (their inputs rounded
        to it: on our AMX kernel, or oneDNN's GEMM); a decode step's products and everything else compute in float32 as
        above.
        """
        bfloat16_encoder = dtype == "bfloat16" and gpu_compute_capability() is None
        if bfloat16_encoder:
            check_bfloat16_cpu()
            if bfloat16_decode_weights is False:
                raise GOTError("dtype bfloat16 on CPU decodes on bfloat16 weights: leave out bfloat16_decode_weights.")
            dtype, bfloat16_decode_weights = "float32", True
        dtype = resolve_dtype(dtype)
        if dtype == "float32":
            set_cpu_threads(num_threads)
        path = resolve_model_path(name_or_path, source)
        processor = GOTProcessor.from_pretrained(path)
        on_cpu = dtype == "float32" and gpu_compute_capability() is None
        if bfloat16_decode_weights and not on_cpu:
            raise GOTError("bfloat16 decode weights are for float32 inference on CPU.")
        if bfloat16_decode_weights is None and (not on_cpu or decode_cpu.load_library() is None):
            bfloat16_decode_weights = False
        model = GOTQwenForCausalLM.from_pretrained(path, dtype=dtype, bfloat16_decode_weights=bfloat16_decode_weights)
        if model.config.im_patch_token != processor.tokenizer.token_id(IMG_PAD):
            raise GOTError(f"The tokenizer and config.json of {path} disagree on the <imgpad> token id.")
        if model.qwen2.embed_tokens.weight.dtype == paddle.bfloat16 and dtype == "float32":
            logger.info("Decoding with the decoder's weights in bfloat16 (widened exactly by the CPU kernels).")
        if bfloat16_encoder:
            run_in_bfloat16(model, checkpoint_export_dir(model, path), num_threads)
        return cls(model, processor)

    def iter_recognize(
        self,
        images: Union[ImageInput, Sequence[ImageInput]],
        ocr_type: str = "ocr",
        box: Optional[Tuple[float, float, float, float]] = None,
        color: Optional[str] = None,
        multi_crop: bool = False,
        max_crops: int = MAX_CROPS,
        multi_page: bool = False,
        max_new_tokens: int = MAX_NEW_TOKENS,
        no_repeat_ngram_size: Optional[int] = None,
        batch_size: int = 1,
        stream: Optional[Callable[[str], None]] = None,
        query: Optional[str] = None,
        repetition_guard: bool = False,
    ) -> Iterator[OCRResult]:
        """Yield one OCRResult per input in input order (one in all with `multi_page`).

        `batch_size` inputs are read at once on the continuous-batching engine: each leaves as soon as it is done and
        the next input takes its row; one whose generation fails is tried once more on its own.
        `no_repeat_ngram_size` defaults to 20, or 0 (off) for multi-crop and multi-page, as the reference does.
        `stream(text)` receives the text as it is generated; it needs a single document. `query` replaces the
        mode's query text (a model fine-tuned with its own prompt is read with that prompt).
        `repetition_guard` ends a text caught in a loop early, keeping what came before the loop.
        """
        options = dict(
            ocr_type=ocr_type,
            box=box,
            color=color,
            multi_crop=multi_crop,
            max_crops=max_crops,
            multi_page=multi_page,
            query=query,
        )
        check_read_options(max_new_tokens, batch_size, **options)
        inputs = expand_inputs(images)
        if no_repeat_ngram_size is None:
            no_repeat_ngram_size = default_ngram_size(multi_crop, multi_page)
        documents = [inputs] if multi_page else [[inp] for inp in inputs]
        if stream is not None:
            check_stream(len(documents))
        engine = Engine(self.model, max_rows=batch_size, max_waiting=batch_size)
        pending = iter(enumerate(documents))
        in_flight: Dict[int, Tuple[OCRResult, RequestHandle, Optional[TextStreamer]]] = {}
        done: Dict[int, OCRResult] = {}
        next_index, exhausted = 0, False
        while True:
            while not exhausted and len(in_flight) < batch_size:
                item = next(pending, None)
                if item is None:
                    exhausted = True
                    break
                index, document = item
                result, request = self.prepare_document(
                    [load_input(inp) for inp in document],
                    options,
                    max_new_tokens,
                    no_repeat_ngram_size,
                    repetition_guard,
                )
                if request is None:
                    done[index] = result
                    continue
                streamer = TextStreamer(self.processor.tokenizer, stream) if stream is not None else None
                handle = engine.submit(request, on_token=streamer.put if streamer is not None else None)
                in_flight[index] = (result, handle, streamer)
            while next_index in done:
                yield done.pop(next_index)
                next_index += 1
            if exhausted and not in_flight:
                return
            engine.step()
            for index in [index for index, (_, handle, _) in in_flight.items() if handle.finished]:
                result, handle, streamer = in_flight.pop(index)
                if handle.finish_reason == ERROR and streamer is None:
                    handle = self.retry_alone(result, handle)
                self.finish_result(result, handle)
                if streamer is not None and result.error is None:
                    streamer.finish(result.text)
                done[index] = result

    def recognize(self, images, **options) -> List[OCRResult]:
        """All results of `iter_recognize` as a list."""
        return list(self.iter_recognize(images, **options))

    def prepare_document(
        self,
        document: List[InputImage],
        options: dict,
        max_new_tokens: int,
        no_repeat_ngram_size: int,
        repetition_guard: bool = False,
    ):
        """`(result, GenerationRequest or None)` for one document (a list of loaded inputs): the request to generate,
        or None with `result.error` set when the document cannot be read."""
        first = document[0]
        result = OCRResult(first.name, page=first.page, error=document_error(document, options["multi_page"]))
        if result.error is not None:
            return result, None
        for inp in document:
            if inp.error is not None:
                logger.warning(f"Skipping {inp.error}")
        good = [inp.image for inp in document if inp.error is None]
        try:
            prepared = self.processor.prepare(OCRRequest(images=good, **options))
        except BadInputError as err:
            result.error = f"{first.name}: {err}"
            return result, None
        request = GenerationRequest(
            prepared.input_ids,
            prepared.pixel_values,
            max_new_tokens,
            self.processor.tokenizer.eos_token_ids,
            no_repeat_ngram_size,
            repetition_guard,
        )
        return result, request

    def retry_alone(self, result: OCRResult, handle: RequestHandle) -> RequestHandle:
        """Generate a request that failed in the batch once more on its own (a failure may be transient: memory
        taken by the other rows, a worker error); the new handle, finished."""
        logger.warning(f"{result.image}: {handle.error} Reading it again on its own.")
        return Engine(self.model, max_rows=1, max_waiting=1).generate([handle.request])[0]

    def finish_result(self, result: OCRResult, handle: RequestHandle) -> None:
        """Fill `result` from a finished request: the decoded, stripped text (or the error), how it ended, and how
        many tokens were made."""
        result.finish_reason, result.new_tokens = handle.finish_reason, len(handle.tokens)
        if handle.finish_reason == ERROR:
            result.error = f"{result.image}: {handle.error}"
        else:
            result.text = self.processor.tokenizer.decode(handle.tokens).strip()
