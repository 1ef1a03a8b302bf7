"""The exported vision encoder (Paddle Inference, oneDNN) against dygraph `encode_images`, at the released size.

    python benchmarks/bench_export.py [--threads 2]

Builds the released architecture (`GOTConfig()`: ViTDet-B on 1024x1024 tiles, 256 features of 1024 per tile) with
random encoder and projector weights (the decoder is never materialised), exports them with
`paddle_got.export.export_encoder`, and times one 1024x1024 tile through dygraph float32 `encode_images` and through
the predictor in each of --precisions (float32, and bfloat16 on CPUs with AMX or AVX512-BF16), each the best of 2
runs after a warm-up, on --threads threads. Prints the CPU and its vector features, the export and load times, the
encoder times and their ratios to dygraph's, and how far each output is from dygraph's.
"""

import argparse
import tempfile
import time

import numpy as np

from bench_infer import timed
from bench_serve import cpu_description

from paddle_got.process import tune_process

tune_process()  # before Paddle loads, as the tools do

WEIGHT_NOISE = 0.02  # as benchmarks/bench_infer.py: weights ~ N(0, 0.02), norm scales ~ 1 + N(0, 0.02)


def build_model():
    """`GOTQwenForCausalLM(GOTConfig())` in eval mode, whose encoder and projector have random float32 weights
    (every tensor, positional tables included, so that no path is trivially zero); the decoder stays lazy."""
    import paddle

    from paddle_got import GOTConfig, GOTQwenForCausalLM

    with paddle.LazyGuard():
        model = GOTQwenForCausalLM(GOTConfig())
    rng = np.random.default_rng(0)
    for layer in (model.qwen2.vision_tower_high, model.qwen2.mm_projector_vary):
        for name, parameter in layer.named_parameters():
            noise = WEIGHT_NOISE * rng.standard_normal(parameter.shape).astype("float32")
            is_scale = name.endswith("weight") and len(parameter.shape) == 1
            parameter.set_value(1.0 + noise if is_scale else noise)
    model.eval()
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both sides")
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=("float32", "bfloat16"),
        help="the predictor's precisions (default: float32, and bfloat16 where the CPU has AMX or AVX512-BF16)",
    )
    args = parser.parse_args()

    import paddle

    from paddle_got.device import set_cpu_threads
    from paddle_got.export import InferenceEncoder, check_bfloat16_cpu, cpu_runs_bfloat16, export_encoder

    precisions = args.precisions or ["float32"] + ["bfloat16"] * cpu_runs_bfloat16()
    if "bfloat16" in precisions:
        check_bfloat16_cpu()

    print(f"CPU: {cpu_description()}; Paddle {paddle.__version__}; {args.threads} threads")
    set_cpu_threads(args.threads)
    model = build_model()
    size = model.config.vision_config.image_size
    pixels = paddle.to_tensor(np.random.default_rng(1).standard_normal((1, 3, size, size)).astype("float32"))
    with paddle.no_grad():
        dygraph_s = timed(lambda: model.qwen2.encode_images(pixels))
        expected = model.qwen2.encode_images(pixels).numpy()
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        export_encoder(model, directory)
        export_s = time.perf_counter() - start
        runs = {}
        for precision in precisions:
            start = time.perf_counter()
            encoder = InferenceEncoder(directory, precision, num_threads=args.threads)
            load_s = time.perf_counter() - start
            runs[precision] = (load_s, timed(lambda encoder=encoder: encoder(pixels)), encoder(pixels).numpy())
    print(f"export {export_s:.1f} s")
    print(f"one {size}x{size} tile: dygraph float32 {dygraph_s:.2f} s")
    for precision, (load_s, predictor_s, features) in runs.items():
        difference = np.abs(features - expected)
        print(
            f"Paddle Inference (oneDNN) {precision}: {predictor_s:.2f} s ({predictor_s / dygraph_s:.2f}x dygraph's "
            f"time; load with its first run {load_s:.1f} s); output {list(features.shape)}: max |difference| "
            f"{difference.max():.3g} ({difference.max() / np.abs(expected).max():.3g} of max |dygraph|), relative L2 "
            f"{np.linalg.norm(features - expected) / np.linalg.norm(expected):.3g}"
        )


if __name__ == "__main__":
    main()
