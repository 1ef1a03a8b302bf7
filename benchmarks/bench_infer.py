"""Inference speed of paddle_got against the PyTorch reference (transformers GotOcr2), same machine, same run.

    python benchmarks/bench_infer.py [--threads 2] [--new_tokens 256] [--batches 1 4 8]

Builds the full released GOT configuration with random bfloat16-valued weights, saves it once in float32 and once
in bfloat16 (as released), and runs four sides, each in its own process so that peak memory is its own: ours on
float32 weights, ours on the bfloat16 checkpoint as `--dtype bfloat16` runs it (decoder weights kept in bfloat16,
widened by our kernels; on a CPU with AMX or AVX512-BF16 the encoder exported and run on oneDNN's bfloat16 kernels
and the prompt's products in bfloat16, on our AMX kernel or oneDNN's GEMM, elsewhere float32 dygraph and MKL), and
transformers (torch, CPU) in float32 and in bfloat16. Prints the CPU's features and the kernel paths. All get the
same 1024x1024 image and prompt, and the same thread count. Prints, per side: vision encoder time,
prefill time, decode tokens/s at batch 1, 4 and 8 (the better of two runs of 32 steps after a warm-up run, EOS
ignored), end-to-end time for --new_tokens new tokens, peak memory; then the ratios, and each stage against
this machine's ceilings (float32 GEMM GFLOP/s and memory read bandwidth, measured at the start and at the end of the
run, the better figure kept).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ENCODER_TFLOP = 0.93  # one 1024x1024 tile through the ViTDet encoder (counted from the shapes of docs/design.md §1)
# Bytes behind the batch-1 decode bound of the released configuration: a step reads the decoder's layers, final
# norm and tied embedding (as the output head) in float32 (half of it with bfloat16 weights), and the KV cache.
DECODER_WEIGHTS_GB = (155_504_640 + 308_404_224 + 1024) * 4 / 1e9
KV_CACHE_GB_PER_TOKEN = 2 * 24 * 16 * 64 * 4 / 1e9  # keys and values, 24 layers, 16 KV heads of 64
DECODE_STEPS = 32
TEXT_TOKENS = 24


def measure_ceilings(threads: int) -> dict:
    """float32 GEMM GFLOP/s (the better of torch and paddle) and memory-copy GB/s on this machine."""
    from paddle_got.process import tune_process

    tune_process()
    import paddle
    import torch

    paddle.base.core.set_num_threads(threads)
    torch.set_num_threads(threads)
    size = 2048
    best = 0.0
    for matmul, make in ((paddle.matmul, paddle.randn), (torch.matmul, torch.randn)):
        a, b = make([size, size]), make([size, size])
        matmul(a, b)
        start = time.perf_counter()
        for _ in range(5):
            matmul(a, b)
        best = max(best, 2 * size**3 * 5 / (time.perf_counter() - start) / 1e9)
    # Read bandwidth with every thread (what a decode step needs: every weight read once): the best single pass, as
    # other tenants of a shared machine only ever slow a pass down.
    weights = torch.ones(1024 * 1024 * 1024 // 4)  # 1 GB
    weights.sum()
    bandwidth = 0.0
    for _ in range(5):
        start = time.perf_counter()
        weights.sum()
        bandwidth = max(bandwidth, weights.numel() * 4 / (time.perf_counter() - start) / 1e9)
    del weights
    # What the BLAS reaches on a matrix-vector product over 1 GB of distinct 1024x4096 weights (one row, as in
    # batch-1 decoding): MKL runs these on one core whatever the thread count.
    matrices = [paddle.randn([1024, 4096]) for _ in range(64)]
    row = paddle.randn([1, 1024])
    for matrix in matrices:
        paddle.matmul(row, matrix)
    start = time.perf_counter()
    for matrix in matrices:
        paddle.matmul(row, matrix)
    gemv = len(matrices) * 1024 * 4096 * 4 / (time.perf_counter() - start) / 1e9
    return {"gemm_gflops": best, "read_gbps": bandwidth, "gemv_gbps": gemv}


def write_inputs(directory: str) -> None:
    """The prompt `[1, L]` (text, `<img>`, the image's pads, `</img>`, text) and one 1024x1024 tile, as .npy files."""
    from paddle_got import GOTConfig

    config = GOTConfig.from_pretrained(directory)
    rng = np.random.default_rng(0)
    text = rng.integers(0, 100_000, TEXT_TOKENS).tolist()
    image = [config.im_start_token] + [config.im_patch_token] * config.image_tokens_per_tile + [config.im_end_token]
    np.save(os.path.join(directory, "prompt.npy"), np.array([text + image + text], dtype=np.int64))
    np.save(os.path.join(directory, "pixels.npy"), rng.standard_normal((1, 3, 1024, 1024)).astype("float32"))


def read_inputs(directory: str):
    """`(prompt ids [1, L] int64, pixels [1, 3, 1024, 1024] float32)` written by `write_inputs`."""
    return np.load(os.path.join(directory, "prompt.npy")), np.load(os.path.join(directory, "pixels.npy"))


def timed(function, repeat: int = 2) -> float:
    """The best wall time of `repeat` calls (after the first, which warms up), in seconds."""
    function()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def decode_tokens_per_second(prefill, step, batch: int) -> float:
    """Tokens/s over DECODE_STEPS cached steps (`step(cache)`) after `prefill(batch)`: the better of two runs,
    after a warm-up run."""

    def run():
        cache = prefill(batch)
        start = time.perf_counter()
        for _ in range(DECODE_STEPS):
            step(cache)
        return time.perf_counter() - start

    run()
    return batch * DECODE_STEPS / min(run(), run())


def run_ours(directory: str, args, bfloat16: bool) -> dict:
    from paddle_got.process import tune_process

    tune_process()
    import paddle

    from paddle_got import GOTQwenForCausalLM
    from paddle_got.device import set_cpu_threads
    from paddle_got.engine import Engine, GenerationRequest
    from paddle_got.export import cpu_runs_bfloat16, export_encoder, run_in_bfloat16
    from paddle_got.modeling.kv_cache import KVCache

    set_cpu_threads(args.threads)
    model = GOTQwenForCausalLM.from_pretrained(directory, bfloat16_decode_weights=bfloat16)
    if bfloat16 and cpu_runs_bfloat16():
        export_dir = os.path.join(directory, "inference")
        export_encoder(model, export_dir, source_checkpoint=directory)
        run_in_bfloat16(model, export_dir, args.threads)
    config = model.config
    ids, pixel_array = read_inputs(directory)
    pixels = paddle.to_tensor(pixel_array)
    results = {}
    with paddle.no_grad():
        results["encoder_s"] = timed(lambda: model.qwen2.encode_images(pixels), repeat=1)
        features = model.qwen2.encode_images(pixels)

        def prefill(batch=1):
            cache = KVCache(config)
            model(
                paddle.to_tensor(np.repeat(ids, batch, 0)),
                past_key_values=cache,
                image_features=paddle.concat([features] * batch),
                last_logits_only=True,
            )
            return cache

        results["prefill_s"] = timed(prefill)
        for batch in args.batches:
            token = paddle.zeros([batch, 1], dtype="int64")

            def step(cache, token=token):
                model(token, past_key_values=cache, last_logits_only=True)

            results[f"decode_tok_s_b{batch}"] = decode_tokens_per_second(prefill, step, batch)
        start = time.perf_counter()  # one page as tools/infer.py reads it by default: an engine of one row
        engine = Engine(model, max_rows=1, max_waiting=1)
        engine.generate([GenerationRequest(ids[0].tolist(), pixel_array, args.new_tokens, end_token_ids=())])
        results["end_to_end_s"] = time.perf_counter() - start
    return results


def run_reference(directory: str, args, bfloat16: bool) -> dict:
    import torch
    from transformers import DynamicCache, GotOcr2ForConditionalGeneration

    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if bfloat16 else torch.float32
    model = GotOcr2ForConditionalGeneration.from_pretrained(directory, torch_dtype=dtype).eval()
    config = model.config
    ids, pixel_array = read_inputs(directory)
    pixels = torch.from_numpy(pixel_array).to(dtype)
    language_model = model.language_model
    results = {}
    with torch.no_grad():
        results["encoder_s"] = timed(lambda: model.get_image_features(pixels), repeat=1)
        features = model.get_image_features(pixels)

        def embeds(batch):
            input_ids = torch.from_numpy(np.repeat(ids, batch, 0))
            values = model.get_input_embeddings()(input_ids)
            mask = (input_ids == config.image_token_index).unsqueeze(-1).expand_as(values)
            return values.masked_scatter(mask, torch.cat([features] * batch))

        def prefill(batch=1):
            cache = DynamicCache()
            language_model(inputs_embeds=embeds(batch), past_key_values=cache, use_cache=True, logits_to_keep=1)
            return cache

        results["prefill_s"] = timed(prefill)
        for batch in args.batches:
            token = torch.zeros((batch, 1), dtype=torch.long)

            def step(cache, token=token):
                language_model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)

            results[f"decode_tok_s_b{batch}"] = decode_tokens_per_second(prefill, step, batch)
        start = time.perf_counter()
        model.generate(
            input_ids=torch.from_numpy(ids),
            pixel_values=pixels,
            do_sample=False,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
        )
        results["end_to_end_s"] = time.perf_counter() - start
    return results


def build_checkpoint(directory: str) -> None:
    """The released configuration with random bfloat16-valued weights, in the Hugging Face layout: float32 in
    `directory`/float32, bfloat16 (as released) in `directory`/bfloat16."""
    import torch
    from transformers import GotOcr2Config, GotOcr2ForConditionalGeneration

    torch.manual_seed(0)
    model = GotOcr2ForConditionalGeneration(GotOcr2Config())
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            is_scale = name.endswith("weight") and parameter.ndim == 1
            noise = 0.02 * torch.randn_like(parameter)
            parameter.copy_((1.0 + noise if is_scale else noise).to(torch.bfloat16).to(torch.float32))
    model.save_pretrained(os.path.join(directory, "float32"), safe_serialization=True)
    model.to(torch.bfloat16).save_pretrained(os.path.join(directory, "bfloat16"), safe_serialization=True)


SIDES = {  # side -> (runner, bfloat16 weights)
    "ours": (run_ours, False),
    "ours_bf16": (run_ours, True),
    "reference": (run_reference, False),
    "reference_bf16": (run_reference, True),
}


def peak_memory_gb() -> float:
    """This process's peak resident memory in GB (VmHWM). Not `ru_maxrss`: across fork and exec that keeps the
    parent's peak, which here (having built the full-size checkpoint in torch) is larger than any side's."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(side: str, directory: str, args) -> None:
    runner, bfloat16 = SIDES[side]
    checkpoint = os.path.join(directory, "bfloat16" if bfloat16 else "float32")
    results = runner(checkpoint, args, bfloat16)
    results["peak_memory_gb"] = peak_memory_gb()
    print(json.dumps(results))


def cpu_and_kernels() -> str:
    """The CPU, its vector features, and the kernel paths our sides take on it."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_serve import cpu_description

    from paddle_got import device
    from paddle_got.export import cpu_runs_bfloat16
    from paddle_got.kernels import decode_cpu

    library = decode_cpu.load_library()
    if library:
        tiles = "AVX-512" if "avx512f" in device.cpu_flags() else "AVX2"
        float32, bfloat16 = ("AVX-512" if library.products_are_wide(weights) else "AVX2" for weights in (0, 1))
        path = (
            f"AVX2 + FMA, attention tiles {tiles}, a few rows' products on float32 weights {float32}, "
            f"on bfloat16 weights {bfloat16} (decode_cpu.cpp)"
        )
    else:
        path = "Paddle's kernels"
    encoder = "Paddle Inference, oneDNN bfloat16" if cpu_runs_bfloat16() else "dygraph float32 (no AMX/AVX512-BF16)"
    if not decode_cpu.load_onednn():
        prompt = "MKL float32 GEMM on widened weights"
    else:
        prompt = "bfloat16 on AMX tiles (amx_linear)" if decode_cpu.amx_usable() else "oneDNN bfloat16 GEMM"
    return f"CPU: {cpu_description()}; decode kernels: {path}; ours_bf16 encoder: {encoder}, prompt products: {prompt}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument(
        "--sides",
        nargs="+",
        choices=tuple(SIDES),
        default=list(SIDES),
        help="which sides to run (torch's bfloat16 is emulated, and very slow, on CPUs without AVX512-BF16/AMX)",
    )
    parser.add_argument("--side", choices=tuple(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        child(args.side, args.checkpoint, args)
        return
    print(cpu_and_kernels(), flush=True)
    ceilings = measure_ceilings(args.threads)
    with tempfile.TemporaryDirectory() as directory:
        print("building the released configuration with random weights", file=sys.stderr)
        build_checkpoint(directory)
        for weights in ("float32", "bfloat16"):
            write_inputs(os.path.join(directory, weights))
        results = {}
        for side in args.sides:
            print(f"measuring {side}", file=sys.stderr)
            output = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--side",
                    side,
                    "--checkpoint",
                    directory,
                    "--threads",
                    str(args.threads),
                    "--new_tokens",
                    str(args.new_tokens),
                    "--batches",
                    *map(str, args.batches),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results[side] = json.loads(output.stdout.strip().splitlines()[-1])
        prompt_tokens = read_inputs(os.path.join(directory, "float32"))[0].shape[1]
    # Measured again at the end, keeping the better figure of each, so a slow moment never flatters the bounds.
    final_ceilings = measure_ceilings(args.threads)
    ceilings = {key: max(value, final_ceilings[key]) for key, value in ceilings.items()}
    print(
        f"machine: {args.threads} threads, float32 GEMM {ceilings['gemm_gflops']:.0f} GFLOP/s, "
        f"memory read {ceilings['read_gbps']:.1f} GB/s, "
        f"MKL one-row matrix-vector product {ceilings['gemv_gbps']:.1f} GB/s"
    )
    columns = [side for side in SIDES if side in results]
    ratios = [
        (f"{a}/{b}", a, b)
        for a, b in (("ours", "reference"), ("ours_bf16", "reference_bf16"), ("ours_bf16", "ours"))
        if a in results and b in results
    ]
    header = "".join(f"{side:>16}" for side in columns) + "".join(f"{name:>26}" for name, _, _ in ratios)
    print(f"{'stage':<24}{header}")
    for key in results[columns[0]]:
        print(
            f"{key:<24}"
            + "".join(f"{results[side][key]:>16.3f}" for side in columns)
            + "".join(f"{results[a][key] / results[b][key]:>26.2f}" for _, a, b in ratios)
        )
    kv_gb = KV_CACHE_GB_PER_TOKEN * (prompt_tokens + DECODE_STEPS / 2)
    for side, values in results.items():
        weight_gb = DECODER_WEIGHTS_GB / (2 if side.endswith("bf16") else 1)
        encoder = ENCODER_TFLOP * 1e3 / values["encoder_s"]
        batch_1 = values["decode_tok_s_b1"]
        bound = ceilings["read_gbps"] / (weight_gb + kv_gb)
        print(
            f"{side}: encoder {encoder:.0f} GFLOP/s = {encoder / ceilings['gemm_gflops']:.0%} of the float32 GEMM "
            f"peak; batch-1 decode {batch_1:.2f} tok/s = {batch_1 / bound:.0%} of the bound for the "
            f"{weight_gb + kv_gb:.2f} GB a step reads ({bound:.2f} tok/s)"
            + "".join(
                f"; batch {batch} = {values[f'decode_tok_s_b{batch}'] / batch_1:.2f}x batch 1"
                for batch in args.batches
                if batch != 1
            )
        )


if __name__ == "__main__":
    main()
