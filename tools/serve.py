"""Serve GOT over an OpenAI-compatible HTTP API (FastAPI + uvicorn) on the continuous-batching engine.

    python tools/serve.py --model_name_or_path stepfun-ai/GOT-OCR2_0 [--host 127.0.0.1] [--port 8000]

POST /v1/chat/completions (image_url parts; GOT options as extra body fields: ocr_type, box, color, multi_crop,
max_crops, multi_page, repetition_guard), POST /v1/ocr (multipart upload of an image or PDF), GET /health,
GET /v1/models, GET /metrics. Binds 127.0.0.1 unless --host says otherwise; --api_key (or PADDLE_GOT_API_KEY)
requires `Authorization: Bearer <key>` on every route but /health.
"""

from paddle_got.process import tune_process

tune_process()  # before Paddle loads (paddle_got/process.py)

import os
import sys

from paddle_got.cli import ArgumentParser, add_device_arguments, add_model_arguments, positive_int, run_cli
from paddle_got.errors import GOTError
from paddle_got.hub import model_source
from paddle_got.serving.service import ServingLimits

API_KEY_VARIABLE = "PADDLE_GOT_API_KEY"


def parse_args():
    defaults = ServingLimits()
    parser = ArgumentParser(__doc__)
    add_model_arguments(parser, "checkpoint directory or hub id")
    parser.add_argument("--served_model_name", help="the model id clients send (default: the checkpoint's name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (0: any free port)")
    parser.add_argument("--api_key", help=f"require this bearer token (default: ${API_KEY_VARIABLE})")
    parser.add_argument("--max_rows", type=positive_int, default=8, help="requests generated at once")
    parser.add_argument("--max_waiting", type=positive_int, default=64, help="requests queued before 503s")
    parser.add_argument(
        "--scheduling",
        default="continuous",
        choices=("continuous", "fixed"),
        help="continuous: a finished row is refilled at once; fixed: batches start together and the "
        "next waits for the whole batch (for comparison)",
    )
    parser.add_argument(
        "--max_cached_tokens",
        type=positive_int,
        default=None,
        help="cache budget: prompt + max_tokens summed over running requests",
    )
    parser.add_argument(
        "--max_body_bytes", type=positive_int, default=defaults.max_body_bytes, help="largest request body"
    )
    parser.add_argument(
        "--max_image_pixels",
        type=positive_int,
        default=defaults.max_image_pixels,
        help="largest image (width x height)",
    )
    parser.add_argument(
        "--max_pdf_pages", type=positive_int, default=defaults.max_pdf_pages, help="most pages of an uploaded PDF"
    )
    parser.add_argument(
        "--request_timeout", type=float, default=defaults.request_timeout, help="seconds a request may take"
    )
    parser.add_argument("--allowed_local_dir", help="image_url may name files under this directory")
    parser.add_argument("--allow_remote_images", action="store_true", help="image_url may be an http(s) URL")
    add_device_arguments(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    source = model_source(args.model_source)
    if args.allowed_local_dir is not None and not os.path.isdir(args.allowed_local_dir):
        raise GOTError(f"--allowed_local_dir {args.allowed_local_dir} is not a directory.")
    if not 0 <= args.port <= 65535:
        raise GOTError(f"--port must be between 0 and 65535, got {args.port}.")
    if args.request_timeout <= 0:
        raise GOTError("--request_timeout must be positive.")
    import uvicorn

    from paddle_got.pipeline import GOT
    from paddle_got.serving.api import create_app
    from paddle_got.serving.service import OCRService

    limits = ServingLimits(
        args.max_body_bytes,
        args.max_image_pixels,
        args.max_pdf_pages,
        args.request_timeout,
        args.allowed_local_dir,
        args.allow_remote_images,
    )
    ocr = GOT.from_pretrained(args.model_name_or_path, dtype=args.dtype, num_threads=args.num_threads, source=source)
    service = OCRService(
        ocr, limits, args.max_rows, args.max_waiting, args.max_cached_tokens, fixed_batches=args.scheduling == "fixed"
    )
    name = args.served_model_name or os.path.basename(os.path.normpath(args.model_name_or_path))
    app = create_app(service, name, args.api_key or os.environ.get(API_KEY_VARIABLE))
    print(f"Serving {name} on http://{args.host}:{args.port} (OpenAI API under /v1)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    run_cli(main)
