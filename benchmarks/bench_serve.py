"""Serving throughput and latency: continuous batching against fixed batches, same server, same requests, same run.

    python benchmarks/bench_serve.py [--threads 2] [--rows 4] [--requests 12] [--max_tokens 16 32 64 128 256 512 1024]

Builds the released GOT configuration with random weights (and a byte-level tokenizer with the released ids),
starts `tools/serve.py` on a free loopback port once with `--scheduling fixed` and once with `--scheduling
continuous`, and sends both the same workload: `--requests` streaming chat completions from `--rows` concurrent
clients, each with its own 1024x1024 image and a `max_tokens` drawn from the spread (random weights rarely make an
end token, so a request mostly runs to its limit). Prints requests/s, tokens/s, p50/p95 latency and time to first
token per mode, then the probe for a short request (16 tokens) sent alone and sent while `--rows - 1` long requests
(512 tokens) are generating. Logs go to stderr, the tables to stdout.
"""

import argparse
import base64
import concurrent.futures
import io
import json
import logging
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVE = os.path.join(REPO, "tools", "serve.py")
MODEL = "got-random"
SHORT_TOKENS, LONG_TOKENS = 16, 512


def cpu_description() -> str:
    """The CPU model and the vector features the kernels care about."""
    name, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and name in ("unknown CPU", "x86_64", ""):
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    features = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name}, {os.cpu_count()} cores, {' '.join(features) or 'no AVX2'}"


def write_random_model(directory: str) -> None:
    """The released configuration with Paddle's random initialisers, and a tokenizer with the released ids."""
    from paddle_got import GOTConfig, GOTQwenForCausalLM
    from paddle_got.tokenizer import write_tiktoken_ranks

    model = GOTQwenForCausalLM(GOTConfig())
    model.eval()
    model.save_pretrained(directory)
    # 151643 byte-level ranks, as many as Qwen-1's: the specials then take their released ids (<imgpad> 151859).
    ranks = {bytes([b]): b for b in range(256)}
    for first in range(256):
        for second in range(256):
            ranks[bytes([first, second])] = len(ranks)
    rng = np.random.default_rng(0)
    while len(ranks) < 151643:
        token = bytes(rng.integers(0, 256, 3).tolist())
        ranks.setdefault(token, len(ranks))
    write_tiktoken_ranks(os.path.join(directory, "qwen.tiktoken"), ranks)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model_dir: str, args, scheduling: str):
    """A tools/serve.py subprocess; returns `(process, base URL)` once /health answers."""
    import httpx

    port = free_port()
    command = [
        sys.executable,
        SERVE,
        "--model_name_or_path",
        model_dir,
        "--served_model_name",
        MODEL,
        "--port",
        str(port),
        "--max_rows",
        str(args.rows),
        "--scheduling",
        scheduling,
        "--num_threads",
        str(args.threads),
        "--request_timeout",
        "7200",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=sys.stderr)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit("the server did not start")


def image_url(seed: int) -> str:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def send(url: str, image: str, max_tokens: int, first_token: Optional[threading.Event] = None) -> dict:
    """One streaming chat completion; its latency, time to first token and completion tokens (`first_token`, if
    given, is set when the first text arrives)."""
    import httpx

    body = {
        "model": MODEL,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}]}],
    }
    start = time.perf_counter()
    first, tokens = None, 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=7200) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
                if first_token is not None:
                    first_token.set()
    return {
        "latency": time.perf_counter() - start,
        "ttft": first if first is not None else float("nan"),
        "tokens": tokens,
    }


def run_workload(url: str, workload, rows: int) -> dict:
    """The workload from `rows` concurrent clients: throughput and latency percentiles."""
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(rows) as pool:
        results = list(pool.map(lambda item: send(url, *item), workload))
    wall = time.perf_counter() - start
    latencies = np.array([r["latency"] for r in results])
    return {
        "wall_s": wall,
        "requests_per_s": len(results) / wall,
        "tokens_per_s": sum(r["tokens"] for r in results) / wall,
        "tokens": sum(r["tokens"] for r in results),
        "p50_latency_s": float(np.percentile(latencies, 50)),
        "p95_latency_s": float(np.percentile(latencies, 95)),
        "p50_ttft_s": float(np.nanpercentile([r["ttft"] for r in results], 50)),
    }


def engine_work(url: str) -> dict:
    """The server's work counters so far (its /metrics): prefill and decode time, steps, mean rows per step."""
    import httpx

    text = httpx.get(url + "/metrics").text
    value = {name: float(number) for name, number in re.findall(r"^paddle_got_(\w+) (\S+)$", text, flags=re.M)}
    return {
        "prefill_s": value["prefill_seconds_total"],
        "decode_s": value["decode_seconds_total"],
        "decode_steps": value["decode_steps_total"],
        "rows_per_step": value["decode_rows_total"] / max(value["decode_steps_total"], 1.0),
    }


def short_request_probe(url: str, rows: int, seed: int) -> dict:
    """A short request alone, then the same once `rows - 1` long requests are generating: each has streamed its
    first text (with fixed batches the short one then waits for their batch to end)."""
    alone = send(url, image_url(seed), SHORT_TOKENS)["latency"]
    long_images = [image_url(seed + 1 + index) for index in range(rows - 1)]
    generating = [threading.Event() for _ in long_images]
    started = concurrent.futures.ThreadPoolExecutor(rows - 1)
    futures = [started.submit(send, url, image, LONG_TOKENS, event) for image, event in zip(long_images, generating)]
    for event, future in zip(generating, futures):
        while not event.wait(1.0):
            if future.done():
                future.result()
                raise SystemExit("a long request of the probe ended before it streamed any text")
    during = send(url, image_url(seed), SHORT_TOKENS)["latency"]
    for future in futures:
        future.result()
    started.shutdown()
    return {"short_alone_s": alone, "short_during_long_s": during, "slowdown": during / alone}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=4, help="running rows = concurrent clients")
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--max_tokens", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512, 1024])
    parser.add_argument("--model_dir", help="reuse a model written by an earlier run")
    parser.add_argument("--skip_probe", action="store_true", help="only the throughput workload")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    print(f"CPU: {cpu_description()}", flush=True)

    scratch = tempfile.mkdtemp(prefix="bench_serve-")
    model_dir = args.model_dir or os.path.join(scratch, "model")
    if not os.path.isdir(model_dir):
        print("Writing the released configuration with random weights ...", file=sys.stderr, flush=True)
        write_random_model(model_dir)
    rng = np.random.default_rng(0)
    spread = [args.max_tokens[index % len(args.max_tokens)] for index in range(args.requests)]
    workload = [(image_url(100 + index), int(tokens)) for index, tokens in enumerate(rng.permutation(spread))]

    report = {}
    for scheduling in ("fixed", "continuous"):
        process, url = start_server(model_dir, args, scheduling)
        try:
            print(f"{scheduling}: {args.requests} requests from {args.rows} clients ...", file=sys.stderr, flush=True)
            report[scheduling] = run_workload(url, workload, args.rows)
            report[scheduling].update(engine_work(url))
            if not args.skip_probe:
                report[scheduling].update(short_request_probe(url, args.rows, seed=1000))
        finally:
            process.terminate()
            process.wait()

    rows = [
        ("requests/s", "requests_per_s", 3),
        ("tokens/s", "tokens_per_s", 1),
        ("p50 latency (s)", "p50_latency_s", 1),
        ("p95 latency (s)", "p95_latency_s", 1),
        ("p50 time to first token (s)", "p50_ttft_s", 1),
        ("wall time (s)", "wall_s", 1),
        ("of which encoder + prefill (s)", "prefill_s", 1),
        ("of which decode steps (s)", "decode_s", 1),
        ("decode steps", "decode_steps", 0),
        ("mean rows per decode step", "rows_per_step", 2),
    ]
    if not args.skip_probe:
        rows += [
            ("short request alone (s)", "short_alone_s", 1),
            ("short request among long ones (s)", "short_during_long_s", 1),
            ("short request slowdown (x)", "slowdown", 2),
        ]
    print(
        f"\n{args.requests} requests, max_tokens {args.max_tokens}, {args.rows} rows/clients, "
        f"{args.threads} threads; completion tokens {report['continuous']['tokens']}\n"
    )
    print("| | fixed batches | continuous batching | continuous/fixed |")
    print("|---|---|---|---|")
    for label, key, digits in rows:
        fixed, continuous = report["fixed"][key], report["continuous"][key]
        print(f"| {label} | {fixed:.{digits}f} | {continuous:.{digits}f} | {continuous / fixed:.2f} |")
    print("\n" + json.dumps(report))


if __name__ == "__main__":
    main()
