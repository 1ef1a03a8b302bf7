"""The vision encoder and projector as a Paddle Inference model: `export_encoder` writes it, `InferenceEncoder` runs
it on CPU (oneDNN) in place of `GOTQwenModel.encode_images`: tiles `[T, 3, S, S]` float32 -> features
`[T, tokens_per_tile, hidden]` float32.

An export directory holds `inference.json` (the PIR program), `inference.pdiparams` (its weights) and
`inference.yml` (what the program expects and returns, where it came from). The program takes a fixed batch of
`TILES_PER_RUN` tiles: the encoder's shape arithmetic (window padding, query blocks sized from the batch) is Python
over known sizes, which `paddle.jit.to_static` cannot trace with an unknown batch, so the loader runs the tiles one
batch at a time. Each tile is a large computation of its own (0.93 TFLOP at 1024 px), so batching tiles would gain
nothing on CPU.
"""

import contextlib
import gc
import hashlib
import json
import os
import shutil
import sys
import warnings
from typing import Iterator, List, Optional

import paddle
import paddle.nn as nn
import yaml

from . import __version__, device
from .checkpoint import move_into, staging_dir
from .constants import CLIP_MEAN, CLIP_STD, INFERENCE_DIR, INFERENCE_METADATA, INFERENCE_PREFIX
from .errors import BadInputError, CheckpointError, ExportError, reason
from .kernels.decode_cpu import cache_directory
from .logger import logger
from .modeling.got import GOTQwenForCausalLM

TILES_PER_RUN = 1
INPUT_NAME = "pixel_values"
PRECISIONS = ("float32", "bfloat16")
# oneDNN's bfloat16 kernels need one of these instruction sets (as /proc/cpuinfo names them).
BFLOAT16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# In bfloat16 mode this pass turns the MLP's matmul + bias + GELU into `fc` ops that stay float32 (measured on a
# Xeon with AMX); without it the products run on AMX.
FLOAT32_FC_PASS = "matmul_add_act_fuse_pass"


class ImageEncoder(nn.Layer):
    """The layers of `GOTQwenModel.encode_images`, alone: tiles `[T, 3, S, S]` -> `[T, tokens_per_tile, hidden]`."""

    def __init__(self, vision_tower_high: nn.Layer, mm_projector_vary: nn.Layer):
        super().__init__()
        self.vision_tower_high = vision_tower_high
        self.mm_projector_vary = mm_projector_vary

    def forward(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        """Projected features `[T, tokens_per_tile, hidden]` in the weights' dtype."""
        return self.mm_projector_vary(self.vision_tower_high(pixel_values))


def export_metadata(config, source_checkpoint: Optional[str]) -> dict:
    """What `inference.yml` says of an export of a model with `config` (a `GOTConfig`): the input and output (name,
    shape, dtype), the preprocessing already applied to the input, the source checkpoint and the versions."""
    size = config.vision_config.image_size
    return {
        "model": "GOT-OCR2.0 vision encoder and projector (GOTQwenModel.encode_images)",
        "source_checkpoint": os.path.abspath(source_checkpoint) if source_checkpoint else None,
        "paddle_version": paddle.__version__,
        "paddle_got_version": __version__,
        "input": {
            "name": INPUT_NAME,
            "shape": [TILES_PER_RUN, config.vision_config.num_channels, size, size],
            "dtype": "float32",
            "preprocessing": f"already applied (GOTProcessor's tiles): RGB resized to {size}x{size} (bicubic), "
            "divided by 255, then minus mean and divided by std per channel",
            "mean": list(CLIP_MEAN),
            "std": list(CLIP_STD),
        },
        "output": {
            "shape": [TILES_PER_RUN, config.image_tokens_per_tile, config.hidden_size],
            "dtype": "float32",
        },
    }


def export_encoder(model, output_dir: str, source_checkpoint: Optional[str] = None) -> dict:
    """Write the vision encoder + projector of `model` (a float32 `GOTQwenForCausalLM`) into `output_dir` as
    `inference.json`, `inference.pdiparams` and `inference.yml`; returns the metadata written to the last.

    The files are written into a staging directory next to `output_dir` and renamed into it when all are complete;
    files of an earlier export there are replaced. `model` itself is left as it was.
    """
    qwen2 = model.qwen2
    dtype = qwen2.vision_tower_high.pos_embed.dtype
    if dtype != paddle.float32:
        held = str(dtype).replace("paddle.", "")
        raise ExportError(f"The encoder is exported in float32, and this model is {held}: load it with dtype float32.")
    encoder = ImageEncoder(qwen2.vision_tower_high, qwen2.mm_projector_vary)
    was_training = qwen2.vision_tower_high.training
    metadata = export_metadata(model.config, source_checkpoint)
    spec = paddle.static.InputSpec(metadata["input"]["shape"], "float32", name=INPUT_NAME)
    staging = staging_dir(output_dir)
    try:
        encoder.eval()
        program = paddle.jit.to_static(encoder, input_spec=[spec], full_graph=True)
        with warnings.catch_warnings():
            # The attention's in-place softmax (a dygraph memory saving) is a plain softmax in a program, as wanted.
            warnings.filterwarnings("ignore", message="In static graph mode, softmax_", category=UserWarning)
            paddle.jit.save(program, os.path.join(staging, INFERENCE_PREFIX))
        with open(os.path.join(staging, INFERENCE_METADATA), "w", encoding="utf-8") as f:
            yaml.safe_dump(metadata, f, sort_keys=False, default_flow_style=None, width=120)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if was_training:
            encoder.train()
    # The traced program and `encoder` hold each other: collected now, they no longer keep the encoder's weights
    # (0.35 GB with GOT's) alive once the model releases them (`run_encoder_exported`).
    del program, encoder
    gc.collect()
    move_into(staging, output_dir)
    return metadata


def export_checkpoint(checkpoint: str, output_dir: Optional[str] = None) -> str:
    """Load the checkpoint directory `checkpoint` (any layout) in float32 and export its encoder + projector into
    `output_dir` (default `<checkpoint>/inference`) with `export_encoder`; returns the output directory."""
    if not os.path.isdir(checkpoint):
        raise CheckpointError(f"Checkpoint directory {checkpoint} does not exist.")
    output_dir = output_dir or os.path.join(checkpoint, INFERENCE_DIR)
    model = GOTQwenForCausalLM.from_pretrained(checkpoint, dtype="float32")
    export_encoder(model, output_dir, source_checkpoint=checkpoint)
    return output_dir


def checkpoint_export_dir(model, checkpoint: str) -> str:
    """The export of the encoder of `model` (a float32-encoder `GOTQwenForCausalLM` loaded from the directory
    `checkpoint`) to run: `<checkpoint>/inference` when it holds one, else one in the cache, exported on first use
    (once for each checkpoint's files and each Paddle / paddle_got version)."""
    inside = os.path.join(checkpoint, INFERENCE_DIR)
    if os.path.isfile(os.path.join(inside, INFERENCE_METADATA)):
        return inside
    files = sorted(
        (entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
        for entry in os.scandir(checkpoint)
        if entry.is_file()
    )
    identity = json.dumps([os.path.abspath(checkpoint), files, paddle.__version__, __version__])
    cached = str(cache_directory() / "encoders" / hashlib.sha256(identity.encode()).hexdigest()[:16])
    if not os.path.isfile(os.path.join(cached, INFERENCE_METADATA)):
        logger.info(f"Exporting the encoder of {checkpoint} for Paddle Inference into {cached} (once).")
        export_encoder(model, cached, source_checkpoint=checkpoint)
    return cached


def read_metadata(directory: str) -> dict:
    """The metadata (`inference.yml`) of the export in `directory`, as a dict; ExportError when a file of the export
    is missing or the metadata cannot be read."""
    names = [INFERENCE_PREFIX + ".json", INFERENCE_PREFIX + ".pdiparams", INFERENCE_METADATA]
    missing = [name for name in names if not os.path.isfile(os.path.join(directory, name))]
    if missing:
        raise ExportError(
            f"No exported encoder in {directory}: {', '.join(missing)} missing (write one with tools/export_model.py)."
        )
    path = os.path.join(directory, INFERENCE_METADATA)
    try:
        with open(path, encoding="utf-8") as f:
            metadata = yaml.safe_load(f)
        shape = [int(size) for size in metadata["input"]["shape"]]
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as err:
        raise ExportError(f"Cannot read {path}: {reason(err)}.") from err
    if len(shape) != 4 or shape[0] != TILES_PER_RUN:
        raise ExportError(
            f"Cannot read {path}: the input shape {shape} is not [{TILES_PER_RUN}, channels, height, width]."
        )
    return metadata


def cpu_runs_bfloat16() -> bool:
    """Whether this CPU has an instruction set oneDNN's bfloat16 kernels need (AMX or AVX512-BF16)."""
    return bool(set(BFLOAT16_CPU_FLAGS) & device.cpu_flags())


def check_bfloat16_cpu() -> None:
    """Return when this CPU has an instruction set oneDNN's bfloat16 kernels need (AMX or AVX512-BF16); raise
    ExportError otherwise."""
    if not cpu_runs_bfloat16():
        raise ExportError(
            "Precision bfloat16 runs on oneDNN's bfloat16 kernels, which need a CPU with AMX or AVX512-BF16 "
            f"(flag {' or '.join(BFLOAT16_CPU_FLAGS)} in {device.CPUINFO}), and this one has neither: use float32."
        )


@contextlib.contextmanager
def native_stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr for the duration, for native code that prints on stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class InferenceEncoder:
    """The export in `directory` as a Paddle Inference predictor on CPU (oneDNN), called like
    `GOTQwenModel.encode_images`.

    `precision` "float32", or "bfloat16" (oneDNN's bfloat16 kernels, allowed on CPUs with AMX or AVX512-BF16 only:
    ExportError elsewhere). `num_threads` defaults to this process's share of the cores. The constructor runs the
    predictor once on zeros: oneDNN builds its kernels on the first run, and Paddle 3.3.1 prints the name of a check
    (`ReduceMeanCheckIfOneDNNSupport`) on stdout while it selects them, sent to stderr here.
    """

    def __init__(self, directory: str, precision: str = "float32", num_threads: Optional[int] = None):
        from paddle import inference

        if precision not in PRECISIONS:
            raise ExportError(f"Unknown precision {precision!r}: choose {' or '.join(PRECISIONS)}.")
        if precision == "bfloat16":
            check_bfloat16_cpu()
        self.directory = directory
        self.metadata = read_metadata(directory)
        self.input_shape = [int(size) for size in self.metadata["input"]["shape"]]
        config = inference.Config(
            os.path.join(directory, INFERENCE_PREFIX + ".json"),
            os.path.join(directory, INFERENCE_PREFIX + ".pdiparams"),
        )
        config.disable_gpu()
        config.enable_onednn()
        config.set_cpu_math_library_num_threads(num_threads or device.cores_per_process())
        config.disable_glog_info()
        if precision == "bfloat16":
            config.enable_onednn_bfloat16()
            config.delete_pass(FLOAT32_FC_PASS)
        self.predictor = inference.create_predictor(config)
        with native_stdout_to_stderr():
            self.run([paddle.zeros(self.input_shape, "float32")])
        logger.info(
            f"Loaded the exported encoder in {directory} ({precision}, oneDNN, "
            f"{config.cpu_math_library_num_threads()} threads)."
        )

    def __call__(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        """Tiles `[T, 3, S, S]` (cast to float32), T >= 1 -> features `[T, tokens_per_tile, hidden]` float32 on CPU;
        `S` is the exported size. The tiles run one at a time (`TILES_PER_RUN`). BadInputError for any other shape."""
        tile_shape = self.input_shape[1:]
        if pixel_values.ndim != 4 or pixel_values.shape[0] < 1 or list(pixel_values.shape[1:]) != tile_shape:
            raise BadInputError(
                f"The exported encoder takes tiles [T, {', '.join(map(str, tile_shape))}], "
                f"got {list(pixel_values.shape)}."
            )
        tiles = pixel_values.astype("float32").cpu()
        features = [
            self.run([tiles[index : index + TILES_PER_RUN]])[0] for index in range(0, tiles.shape[0], TILES_PER_RUN)
        ]
        return features[0] if len(features) == 1 else paddle.concat(features)

    def run(self, inputs: List[paddle.Tensor]) -> List[paddle.Tensor]:
        """The predictor's outputs for `inputs`, after which Paddle's own CPU kernels get their thread count back: a
        run leaves the math library on one thread (a bfloat16 page's prefill then took 2.35 s instead of 1.25)."""
        try:
            return self.predictor.run(inputs)
        finally:
            device.set_cpu_threads(device.cpu_threads())


def run_encoder_exported(model, directory: str, precision: str = "bfloat16", num_threads: Optional[int] = None) -> None:
    """Make `model` (a GOTQwenForCausalLM, for inference) encode images with the export in `directory` through an
    InferenceEncoder; its dygraph encoder's weights are released first, so that the predictor reuses their memory
    (0.3 GB less at the peak with GOT's encoder, measured on CPU)."""
    model.qwen2.drop_dygraph_encoder()
    model.qwen2.exported_encoder = InferenceEncoder(directory, precision, num_threads)


def run_in_bfloat16(model, directory: str, num_threads: Optional[int] = None) -> None:
    """Make `model` (a GOTQwenForCausalLM with its decoder weights in bfloat16, for inference) run as `dtype`
    bfloat16 does on CPU: the encoder exported in `directory` on oneDNN's bfloat16 kernels (`run_encoder_exported`),
    a prompt's products in bfloat16 (`multiply_prompts_in_bfloat16`)."""
    run_encoder_exported(model, directory, "bfloat16", num_threads)
    model.multiply_prompts_in_bfloat16()
