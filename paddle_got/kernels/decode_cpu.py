"""The decode step's memory-bound work on CPU: our kernels (`decode_cpu.cpp`) where they apply, Paddle's elsewhere.

While generating, every linear layer multiplies 1-8 rows (one per sequence) by a weight read once from memory, and
attention reads each cached key and value once, so a step's speed is its read rate. MKL runs one row on a single
core and eight rows slower still, and Paddle's attention would read the cache's free capacity too; our kernels
stream on every core and read only filled positions. They apply in float32 inference on CPU (weights in float32, or in
bfloat16 for half the reads: see `GOTQwenForCausalLM.keep_decoder_weights_in_bfloat16`) and are compiled on first
use (AVX2 + FMA, Linux x86-64, any C++ compiler) into the cache directory, then loaded with ctypes. Without a
compiler, on another CPU, or with `PADDLE_GOT_NATIVE=0`, Paddle's kernels run instead (the same results up to
float32 summation order).

A one-token step runs through every decoder layer in one call (`decode_layers`: RMSNorm, q/k/v, attention, o, SwiGLU,
residuals, back to back in C++), which saves the ~10 Python-side kernel calls and Paddle ops per layer; where a
layer is not plain (LoRA), the layers run one by one, each product and attention still through our kernels. A
prefill's attention runs through the same attention kernel (`cached_attention`), causally, without the
`[heads, tokens, tokens]` score matrix Paddle's ops would build. The vision encoder's attention has its own kernel
(`vision_attention`), bound by arithmetic rather than reads, in the same library; its register tiles and a prompt's
run on AVX-512 where the CPU has it, and so do a few rows' products where that was measured faster: on bfloat16
weights where the CPU has AMX, on float32 weights where it has AVX-512 without AMX (the library's `use_wide_tiles`,
asked for on loading; `products_are_wide` tells).

With `--dtype bfloat16` on a CPU with AMX or AVX512-BF16, a prompt's products (more than `MAX_ROWS` rows) run in
bfloat16, their inputs rounded to it (`bfloat16_linear`): on our AMX kernel (`amx_linear`) where the CPU has AMX, else
on oneDNN's bfloat16 GEMM from Paddle's wheel (`bfloat16_matmul`), instead of MKL's float32 GEMM on widened weights.
"""

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import paddle
import paddle.nn as nn
from paddle import _C_ops

from .. import device
from ..logger import logger
from ..process import MMAP_THRESHOLD_BYTES

SOURCE = Path(__file__).with_name("decode_cpu.cpp")
COMPILE_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-fPIC", "-std=c++17"]
MAX_ROWS = 8  # beyond this many rows MKL's blocked GEMM is the better kernel
CPU = paddle.CPUPlace()


def cache_directory() -> Path:
    """Where what paddle_got builds on first use (compiled kernels, exported encoders) is kept: `$PADDLE_GOT_CACHE`,
    else `~/.cache/paddle_got`."""
    return Path(os.environ.get("PADDLE_GOT_CACHE") or Path.home() / ".cache" / "paddle_got")


def openmp_link_flags() -> List[str]:
    """Link against the OpenMP runtime of Paddle's MKL when the wheel ships one, else the compiler's own.

    Sharing MKL's thread pool matters: two runtimes each keep their idle threads spinning, and on a 2-core machine
    a decode step alternating between MKL and our kernel ran 3x slower.
    """
    paddle_libs = Path(paddle.__file__).parent / "libs"
    if (paddle_libs / "libiomp5.so").exists():
        return [f"-L{paddle_libs}", "-liomp5", f"-Wl,-rpath,{paddle_libs}"]
    return ["-fopenmp"]


def compile_library(compiler: str, link_flags: List[str], target: Path) -> None:
    """Compile `SOURCE` into the shared library `target` (built in a temporary directory, then renamed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        objects = Path(scratch) / "decode_cpu.o"
        built = Path(scratch) / target.name
        for command in (
            [compiler, *COMPILE_FLAGS, "-c", str(SOURCE), "-o", str(objects)],
            [compiler, "-shared", str(objects), "-o", str(built), *link_flags],
        ):
            subprocess.run(command, check=True, capture_output=True, text=True)
        os.replace(built, target)


@functools.lru_cache(maxsize=None)
def load_library() -> Optional[ctypes.CDLL]:
    """The compiled kernel library, building it on first use; None where it cannot run (the reason is logged)."""
    if os.environ.get("PADDLE_GOT_NATIVE", "1") == "0":
        return None
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        logger.info("No C++ compiler found: decoding on CPU uses Paddle's kernels (slower).")
        return None
    link_flags = openmp_link_flags()
    recipe = " ".join([compiler, *COMPILE_FLAGS, *link_flags]).encode()
    target = cache_directory() / f"decode_cpu-{hashlib.sha256(SOURCE.read_bytes() + recipe).hexdigest()[:16]}.so"
    try:
        if not target.exists():
            logger.info("Compiling the CPU decode kernels (once) into %s", target.parent)
            compile_library(compiler, link_flags, target)
        library = ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", None) or str(error)
        logger.warning(
            "Could not build the CPU decode kernels (%s); using Paddle's.",
            detail.strip().splitlines()[-1] if detail.strip() else error,
        )
        return None
    if not library.decode_cpu_supported():
        logger.info("This CPU lacks AVX2/FMA: decoding on CPU uses Paddle's kernels.")
        return None
    library.use_wide_tiles.argtypes = [ctypes.c_int]
    library.use_wide_tiles(1)
    library.use_wide_products.argtypes = [ctypes.c_int, ctypes.c_int]
    library.products_are_wide.argtypes = [ctypes.c_int]
    pointer, count = ctypes.c_void_p, ctypes.c_int64
    for product in (library.skinny_matmul, library.skinny_matmul_bf16):
        product.argtypes = [pointer, count, count, pointer, count, ctypes.c_int, pointer, pointer, ctypes.c_int]
    library.cached_attention.argtypes = [ctypes.POINTER(CachedAttentionArgs), ctypes.c_int]
    library.rms_norm.argtypes = [pointer, count, count, pointer, ctypes.c_float, pointer, ctypes.c_int]
    library.silu_mul.argtypes = [pointer, pointer, count, ctypes.c_int]
    library.add_bias.argtypes = [pointer, count, count, count, pointer, ctypes.c_int]
    library.decode_layers.argtypes = [ctypes.POINTER(DecodeLayersArgs), ctypes.c_int]
    library.vision_attention.argtypes = [ctypes.POINTER(VisionAttentionArgs), ctypes.c_int]
    library.amx_linear_supported.restype = ctypes.c_int
    library.amx_linear.argtypes = [ctypes.POINTER(AmxLinearArgs), ctypes.c_int]
    conversions = (library.widen_bf16, library.narrow_bf16)
    for conversion in conversions:
        conversion.argtypes = [pointer, count, pointer, ctypes.c_int]
    products = (library.skinny_matmul, library.skinny_matmul_bf16)
    others = (library.cached_attention, library.rms_norm, library.silu_mul, library.add_bias, library.decode_layers)
    for function in (*products, *others, library.vision_attention, *conversions, library.amx_linear):
        function.restype = None
    return library


def kernels_apply(activations: paddle.Tensor, stored: paddle.Tensor, weight_dtypes=(paddle.float32,)) -> bool:
    """True when our kernels can take float32 `activations` with `stored` (a weight, in one of `weight_dtypes`, or a
    cache) in CPU inference."""
    return (
        paddle.in_dynamic_mode()
        and not paddle.is_grad_enabled()
        and activations.dtype == paddle.float32
        and stored.dtype in weight_dtypes
        and activations.place.is_cpu_place()
        and stored.is_contiguous()
        and load_library() is not None
    )


PRODUCT_WEIGHT_DTYPES = (paddle.float32, paddle.bfloat16)
# A decoder layer's tensors as `decode_layers` takes them (DecodeLayerTensors in decode_cpu.cpp).
LAYER_TENSORS = (
    "input_norm q_weight q_bias k_weight k_bias v_weight v_bias o_weight post_attention_norm gate_weight up_weight"
    " down_weight"
).split()
PRODUCT_WEIGHT_INDICES = [index for index, name in enumerate(LAYER_TENSORS) if name.endswith("_weight")]


def few_rows(rows: paddle.Tensor) -> bool:
    """True when `rows` `[..., features]` holds at most `MAX_ROWS` rows."""
    return math.prod(rows.shape[:-1]) <= MAX_ROWS


def weight_in(weight: paddle.Tensor, activations: paddle.Tensor) -> paddle.Tensor:
    """`weight` in the `activations`' dtype: bfloat16 decoder weights (kept to halve a decode step's reads) are
    widened for Paddle's kernels, which multiply matching dtypes only (by our kernel in CPU inference, where Paddle's
    cast reads ~3 GB/s); any other weight is returned as it is."""
    if weight.dtype == activations.dtype:
        return weight
    if not kernels_apply(activations, weight, (paddle.bfloat16,)):
        return weight.astype(activations.dtype)
    widened = _C_ops.empty(weight.shape, paddle.float32, CPU)
    load_library().widen_bf16(weight.data_ptr(), math.prod(weight.shape), widened.data_ptr(), device.cpu_threads())
    return widened


HUGE_PAGE_BYTES = 2 * 1024 * 1024
MADV_HUGEPAGE = 14  # Linux's madvise advice: back this range with transparent huge pages
# Smaller buffers come from malloc's heap (above glibc's mmap threshold, 32 MB at most, they are fresh mappings),
# whose pages may have been touched already: advice then comes too late.
HUGE_PAGE_MIN_BYTES = MMAP_THRESHOLD_BYTES


def move_to_huge_pages(tensor: paddle.Tensor) -> bool:
    """Copy CPU `tensor`'s data into a fresh buffer advised onto 2 MB pages before it is first written
    (madvise MADV_HUGEPAGE; with Linux's transparent huge pages in "madvise" mode nothing else gets them) and make
    `tensor` use it in place; True when it did (Linux, a CPU tensor of at least `HUGE_PAGE_MIN_BYTES`).

    A weight streamed every step then misses the TLB once per 2 MB instead of once per 4 KB: the tied output head
    (272 MB in bfloat16) read at 29.6 instead of 19.3 GB/s on a 2-core Xeon.
    """
    size = math.prod(tensor.shape) * tensor.element_size()
    if platform.system() != "Linux" or not tensor.place.is_cpu_place() or size < HUGE_PAGE_MIN_BYTES:
        return False
    fresh = _C_ops.empty(tensor.shape, tensor.dtype, CPU)
    start = -(-fresh.data_ptr() // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    end = (fresh.data_ptr() + size) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
    libc = ctypes.CDLL("libc.so.6")
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.madvise(start, end - start, MADV_HUGEPAGE) != 0:
        return False
    with paddle.no_grad():
        paddle.assign(tensor, output=fresh)
    fresh._share_buffer_to(tensor)
    return True


ONEDNN_LIBRARY = "libdnnl.so.3"  # in Paddle's CPU wheel, next to its MKL
# dnnl_cpu_isa_avx512_core_bf16 in oneDNN 3's dnnl_types.h: each ISA's value holds the bits of those it extends, so
# AMX's values hold these too.
ONEDNN_BFLOAT16_ISA = 0xE7
BFLOAT16_GEMM = "bfloat16_gemm"  # an nn.Linear with this attribute True multiplies > MAX_ROWS rows in bfloat16


@functools.lru_cache(maxsize=None)
def load_onednn() -> Optional[ctypes.CDLL]:
    """Paddle's oneDNN with `dnnl_gemm_bf16bf16f32` bound, where oneDNN runs it on native bfloat16 instructions (AMX
    or AVX512-BF16, as oneDNN itself detects them) and our kernels load; None elsewhere."""
    path = Path(paddle.__file__).parent / "libs" / ONEDNN_LIBRARY
    if load_library() is None or not path.exists():
        return None
    try:
        onednn = ctypes.CDLL(str(path))
        isa = onednn.dnnl_get_effective_cpu_isa
        gemm = onednn.dnnl_gemm_bf16bf16f32
    except (OSError, AttributeError):
        return None
    isa.restype = ctypes.c_int
    if isa() & ONEDNN_BFLOAT16_ISA != ONEDNN_BFLOAT16_ISA:
        return None
    size, pointer = ctypes.c_int64, ctypes.c_void_p
    gemm.argtypes = [ctypes.c_char, ctypes.c_char, size, size, size, ctypes.c_float, pointer, size, pointer, size]
    gemm.argtypes += [ctypes.c_float, pointer, size]
    gemm.restype = ctypes.c_int
    return onednn


def bfloat16_gemm_applies(layer: nn.Linear, activations: paddle.Tensor, rows: int) -> bool:
    """True when `layer` asks for bfloat16 GEMMs (`BFLOAT16_GEMM`), holds a bfloat16 weight (and a float32 bias or
    none), the product has more than `MAX_ROWS` `rows` (fewer stay on our exact kernels), and `bfloat16_linear` can
    multiply the float32 `activations` by it (CPU inference, native bfloat16 instructions as oneDNN detects them)."""
    return (
        getattr(layer, BFLOAT16_GEMM, False)
        and rows > MAX_ROWS
        and kernels_apply(activations, layer.weight, (paddle.bfloat16,))
        and (layer.bias is None or layer.bias.dtype == paddle.float32)
        and load_onednn() is not None
    )


@functools.lru_cache(maxsize=None)
def gomp_library() -> Optional[ctypes.CDLL]:
    """The GNU OpenMP runtime Paddle's oneDNN runs on; None where it cannot be loaded."""
    try:
        return ctypes.CDLL("libgomp.so.1")
    except OSError:
        return None


def gomp_threads(count: int) -> None:
    """Give the calling thread's next GNU OpenMP regions (oneDNN's) `count` threads."""
    library = gomp_library()
    if library is not None:
        library.omp_set_num_threads(count)


class AmxLinearArgs(ctypes.Structure):
    """Pointers and sizes for `amx_linear` in decode_cpu.cpp (the same fields, in the same order)."""

    _fields_ = [
        ("x", ctypes.c_void_p),
        *((name, ctypes.c_int64) for name in "batch tokens depth x_feature_major".split()),
        ("weight", ctypes.c_void_p),
        ("columns", ctypes.c_int64),
        ("bias", ctypes.c_void_p),
        ("out", ctypes.c_void_p),
        ("out_feature_major", ctypes.c_int64),
    ]


def amx_usable() -> bool:
    """True when our kernels load and this CPU has AMX's bfloat16 tiles, which Linux lets this process use (asked
    for the first time this runs)."""
    library = load_library()
    return library is not None and bool(library.amx_linear_supported())


def amx_linear(
    layer: nn.Linear, activations: paddle.Tensor, activations_feature_major: bool, out_feature_major: bool
) -> paddle.Tensor:
    """`bfloat16_linear` on our AMX kernel (the caller checked `amx_usable`); see there for the shapes."""
    x = activations.contiguous()
    depth, columns = layer.weight.shape
    if activations_feature_major:
        batch, tokens = x.shape[0], x.shape[2]
        leading = [batch, tokens]
    else:
        leading = x.shape[:-1]
        batch, tokens = leading if out_feature_major else (1, math.prod(leading))
    shape = [batch, columns, tokens] if out_feature_major else [*leading, columns]
    output = _C_ops.empty(shape, paddle.float32, CPU)
    args = AmxLinearArgs(
        x=x.data_ptr(),
        batch=batch,
        tokens=tokens,
        depth=depth,
        x_feature_major=int(activations_feature_major),
        weight=layer.weight.data_ptr(),
        columns=columns,
        bias=None if layer.bias is None else layer.bias.data_ptr(),
        out=output.data_ptr(),
        out_feature_major=int(out_feature_major),
    )
    load_library().amx_linear(ctypes.byref(args), device.cpu_threads())
    return output


def bfloat16_linear(
    layer: nn.Linear,
    activations: paddle.Tensor,
    activations_feature_major: bool = False,
    out_feature_major: bool = False,
) -> paddle.Tensor:
    """`layer` (a bfloat16 weight `[in, out]`, a float32 bias or none) applied to float32 activations rounded to
    bfloat16 (ties to even), float32 sums: the products of a prompt in bfloat16 (see `bfloat16_gemm_applies`).

    `activations` are `[..., in]` (`[N, L, in]` for a feature-major output), or feature-major `[N, in, L]`; returns
    float32 `[..., out]` (`[N, L, out]`), or feature-major `[N, out, L]` with `out_feature_major`. On AMX our kernel
    (`amx_linear`: a 306-token prefill's products 0.21 s against oneDNN's 0.24 on two Xeon cores), elsewhere
    oneDNN's GEMM (`bfloat16_matmul`).
    """
    if amx_usable():
        return amx_linear(layer, activations, activations_feature_major, out_feature_major)
    if out_feature_major:
        product = bfloat16_matmul(
            layer.weight, activations, transpose_x=True, transpose_y=not activations_feature_major
        )
        return product if layer.bias is None else product.add_(layer.bias.unsqueeze(-1))
    product = bfloat16_matmul(activations, layer.weight, transpose_x=activations_feature_major)
    return product if layer.bias is None else product.add_(layer.bias)


def bfloat16_matmul(
    x: paddle.Tensor, y: paddle.Tensor, transpose_x: bool = False, transpose_y: bool = False
) -> paddle.Tensor:
    """`paddle.matmul(x, y, transpose_x, transpose_y)` on oneDNN's bfloat16 GEMM (AMX where the CPU has it), where one
    operand is a bfloat16 weight `[r, c]` and the other float32 activations `[..., r, c]`, rounded to bfloat16 (ties
    to even); float32 accumulation, float32 `[..., M, N]`.

    The rounding costs ~3 significant digits of the activations (relative error ~1e-3 against float32), as in
    torch's bfloat16 linear layers; oneDNN runs on libgomp's threads, `device.cpu_threads()` of them.
    """
    threads = device.cpu_threads()
    operands = []
    for operand in (x, y):
        operand = operand.contiguous()
        if operand.dtype == paddle.float32:
            narrowed = _C_ops.empty(operand.shape, paddle.bfloat16, CPU)
            load_library().narrow_bf16(operand.data_ptr(), math.prod(operand.shape), narrowed.data_ptr(), threads)
            operand, batch = narrowed, operand.shape[:-2]
        operands.append(operand)
    (x, y), matrices = operands, math.prod(batch)
    rows, depth = x.shape[-2:][::-1] if transpose_x else x.shape[-2:]
    columns = y.shape[-2] if transpose_y else y.shape[-1]
    output = _C_ops.empty([*batch, rows, columns], paddle.float32, CPU)
    gomp_threads(threads)
    gemm, bytes_per_value = load_onednn().dnnl_gemm_bf16bf16f32, 2
    for index in range(matrices):
        x_offset, y_offset = (bytes_per_value * index * math.prod(t.shape[-2:]) if t.ndim > 2 else 0 for t in (x, y))
        status = gemm(
            b"T" if transpose_x else b"N", b"T" if transpose_y else b"N", rows, columns, depth, 1.0,
            x.data_ptr() + x_offset, x.shape[-1], y.data_ptr() + y_offset, y.shape[-1], 0.0,
            output.data_ptr() + 4 * index * rows * columns, columns,
        )  # fmt: skip
        if status != 0:
            raise RuntimeError(f"oneDNN's bfloat16 GEMM failed (dnnl_status_t {status}).")
    return output


def skinny_matmul(
    rows: paddle.Tensor, weight: paddle.Tensor, bias: Optional[paddle.Tensor], weight_is_out_by_in: bool
) -> paddle.Tensor:
    """Our kernel's `rows @ weight + bias`, `weight` float32 or bfloat16 (the caller checked `few_rows` and
    `kernels_apply`); float32 `[..., out]`."""
    out_features = weight.shape[0] if weight_is_out_by_in else weight.shape[1]
    rows = rows.contiguous()
    output = _C_ops.empty([*rows.shape[:-1], out_features], rows.dtype, CPU)
    library = load_library()
    product = library.skinny_matmul_bf16 if weight.dtype == paddle.bfloat16 else library.skinny_matmul
    product(
        rows.data_ptr(),
        math.prod(rows.shape[:-1]),
        rows.shape[-1],
        weight.data_ptr(),
        out_features,
        int(weight_is_out_by_in),
        None if bias is None else bias.data_ptr(),
        output.data_ptr(),
        device.cpu_threads(),
    )
    return output


def matmul(
    rows: paddle.Tensor, weight: paddle.Tensor, bias: Optional[paddle.Tensor] = None, weight_is_out_by_in: bool = False
) -> paddle.Tensor:
    """`rows @ weight + bias`: `[..., in]` -> `[..., out]` in `rows`' dtype, our kernel where it applies.

    `weight` is `[in, out]`, or `[out, in]` (an embedding table) with `weight_is_out_by_in`.
    """
    if few_rows(rows) and kernels_apply(rows, weight, PRODUCT_WEIGHT_DTYPES):
        return skinny_matmul(rows, weight, bias, weight_is_out_by_in)
    product = paddle.matmul(rows, weight_in(weight, rows), transpose_y=weight_is_out_by_in)
    return product if bias is None else product + bias


def linear(layer: nn.Layer, rows: paddle.Tensor) -> paddle.Tensor:
    """`layer(rows)`, through our kernel when `layer` is a plain `nn.Linear` and the kernel applies, in bfloat16 for
    more rows when the layer asks for it (`BFLOAT16_GEMM`, see `bfloat16_linear`); a wrapped one
    (e.g. LoRA) and everything else run the layer's own forward (a bfloat16 weight widened for Paddle's)."""
    if type(layer) is not nn.Linear:
        return layer(rows)
    if few_rows(rows):
        if kernels_apply(rows, layer.weight, PRODUCT_WEIGHT_DTYPES):
            return skinny_matmul(rows, layer.weight, layer.bias, weight_is_out_by_in=False)
    elif bfloat16_gemm_applies(layer, rows, math.prod(rows.shape[:-1])):
        return bfloat16_linear(layer, rows)
    weight = weight_in(layer.weight, rows)
    if layer.bias is None or not kernels_apply(rows, layer.bias):
        return nn.functional.linear(rows, weight, layer.bias)
    return plus_bias(paddle.matmul(rows, weight), layer.bias)


def plus_bias(output: paddle.Tensor, bias: paddle.Tensor, feature_major: bool = False) -> paddle.Tensor:
    """`output + bias` for a product's fresh `output`, `[..., features]` (or `[N, features, L]` when `feature_major`),
    and `bias` `[features]`: in CPU inference our kernel adds it into `output` in place (Paddle's broadcasting add
    took 24 ms for a `[4096, 3072]` float32 output on a 2-core EPYC); elsewhere Paddle's add, a new tensor."""
    if not (kernels_apply(output, bias) and output.is_contiguous()):
        return output + (bias.unsqueeze(-1) if feature_major else bias)
    features = bias.shape[0]
    inner = output.shape[-1] if feature_major else 1
    outer = math.prod(output.shape) // (features * inner)
    load_library().add_bias(output.data_ptr(), outer, features, inner, bias.data_ptr(), device.cpu_threads())
    return output


class CachedAttentionArgs(ctypes.Structure):
    """Pointers and sizes for `cached_attention` in decode_cpu.cpp (the same fields, in the same order)."""

    _fields_ = [
        (name, ctype)
        for ctype, names in (
            (ctypes.c_void_p, "query new_keys new_values query_cos query_sin key_cos key_sin"),
            (ctypes.c_int64, "table_row_stride"),
            (ctypes.c_void_p, "keys values"),
            (ctypes.c_int64, "capacity position"),
            (ctypes.c_void_p, "positions"),
            (ctypes.c_int64, "new_tokens"),
            (ctypes.c_void_p, "bias"),
            (ctypes.c_int64, "bias_row_stride bias_columns batch heads kv_heads head_dim"),
            (ctypes.c_void_p, "out"),
        )
        for name in names.split()
    ]


def per_head_rows(table: paddle.Tensor) -> int:
    """Floats between one head's block of a rotary table or bias and the next: 0 for a shared `[m, n]` table."""
    return 0 if table.ndim == 2 else table.shape[-2] * table.shape[-1]


def attention_args(
    rotary: Tuple[Tuple[paddle.Tensor, paddle.Tensor], Tuple[paddle.Tensor, paddle.Tensor]],
    keys: paddle.Tensor,
    position: int,
    positions: Optional[paddle.Tensor],
    attention_bias: Optional[paddle.Tensor],
    batch: int,
    heads: int,
    head_dim: int,
    new_tokens: int,
) -> Tuple[CachedAttentionArgs, List[paddle.Tensor]]:
    """A step's `CachedAttentionArgs` but for its per-layer pointers (query, new keys/values, cache, out), and the
    contiguous tensors it points at (to be kept alive until the call returns).

    `rotary` is as for `cached_attention`; `keys` is a cache buffer (for its shape).
    """
    held = [table.contiguous() for tables in rotary for table in tables]  # query cos, sin, key cos, sin
    if positions is not None:
        held.append(positions.astype("int64").contiguous())
    if attention_bias is not None:
        held.append(attention_bias.contiguous())
    args = CachedAttentionArgs(
        query_cos=held[0].data_ptr(),
        query_sin=held[1].data_ptr(),
        key_cos=held[2].data_ptr(),
        key_sin=held[3].data_ptr(),
        table_row_stride=per_head_rows(held[0]),
        capacity=keys.shape[2],
        position=position,
        positions=None if positions is None else held[4].data_ptr(),
        new_tokens=new_tokens,
        bias=None if attention_bias is None else held[-1].data_ptr(),
        bias_row_stride=0 if attention_bias is None else per_head_rows(attention_bias),
        bias_columns=0 if attention_bias is None else attention_bias.shape[-1],
        batch=batch,
        heads=heads,
        kv_heads=keys.shape[1],
        head_dim=head_dim,
    )
    return args, held


def cached_attention(
    query: paddle.Tensor,
    new_keys: paddle.Tensor,
    new_values: paddle.Tensor,
    rotary: Tuple[Tuple[paddle.Tensor, paddle.Tensor], Tuple[paddle.Tensor, paddle.Tensor]],
    keys: paddle.Tensor,
    values: paddle.Tensor,
    position: int,
    attention_bias: Optional[paddle.Tensor],
    positions: Optional[paddle.Tensor] = None,
) -> Optional[paddle.Tensor]:
    """One cached attention step for `L` new tokens per sequence (1 in a decode step, the prompt in a prefill);
    returns `[B, H, d, L]`, or None where our kernel does not apply.

    `query` `[B, H, d, L]` and `new_keys`/`new_values` `[B, kv_heads, d, L]` are the new tokens' projections before
    rotary; `rotary` is `((cos, sin) for query heads, (cos, sin) for KV heads)` as `attend`'s callers build it.
    The rotated keys and the values are written at positions `position...position + L - 1` of the token-major cache
    buffers `keys`/`values` `[>= B, kv_heads, capacity, d]` (sequence b in slot b). Without `attention_bias` each
    query attends causally; with it (additive, `[L, K]` shared or `[B, H, L, K]`, K >= position + L) over every
    filled position. `positions` (int64 `[B]`, one new token) gives each sequence its own position instead
    (continuous batching).
    """
    if not kernels_apply(query, keys) or not values.is_contiguous():
        return None
    batch, heads, head_dim, new_tokens = query.shape
    args, held = attention_args(rotary, keys, position, positions, attention_bias, batch, heads, head_dim, new_tokens)
    query, new_keys, new_values = (tensor.contiguous() for tensor in (query, new_keys, new_values))
    output = _C_ops.empty(query.shape, query.dtype, CPU)
    args.query, args.new_keys, args.new_values = query.data_ptr(), new_keys.data_ptr(), new_values.data_ptr()
    args.keys, args.values, args.out = keys.data_ptr(), values.data_ptr(), output.data_ptr()
    load_library().cached_attention(ctypes.byref(args), device.cpu_threads())  # `held` is alive until here
    return output


def rms_norm(rows: paddle.Tensor, weight: paddle.Tensor, eps: float) -> Optional[paddle.Tensor]:
    """`rows / rms(rows) * weight` over the last axis (float32, `rows`' shape); None where our kernel does not apply.

    Any number of rows: a step's few, or a prompt's (Paddle's five ops for it took ~40 ms of a 1.1 s prefill)."""
    if not kernels_apply(rows, weight):
        return None
    rows = rows.contiguous()
    output = _C_ops.empty(rows.shape, rows.dtype, CPU)
    load_library().rms_norm(
        rows.data_ptr(),
        math.prod(rows.shape[:-1]),
        rows.shape[-1],
        weight.data_ptr(),
        eps,
        output.data_ptr(),
        device.cpu_threads(),
    )
    return output


def silu_times(gate: paddle.Tensor, up: paddle.Tensor) -> Optional[paddle.Tensor]:
    """`silu(gate) * up` written into `gate` (which the caller owns) and returned; None where our kernel does not
    apply (Paddle's silu and multiply took ~60 ms of a 1.1 s prefill)."""
    if gate.shape != up.shape or not gate.is_contiguous() or not kernels_apply(gate, up):
        return None
    load_library().silu_mul(gate.data_ptr(), up.data_ptr(), math.prod(gate.shape), device.cpu_threads())
    return gate


class DecodeLayerTensors(ctypes.Structure):
    """One decoder layer's tensors for `decode_layers` in decode_cpu.cpp (the same fields, in the same order)."""

    _fields_ = [(name, ctypes.c_void_p) for name in LAYER_TENSORS] + [
        ("keys", ctypes.c_void_p),
        ("values", ctypes.c_void_p),
    ]


class DecodeLayersArgs(ctypes.Structure):
    """`decode_layers`' arguments in decode_cpu.cpp (the same fields, in the same order)."""

    _fields_ = [
        ("hidden", ctypes.c_void_p),
        *((name, ctypes.c_int64) for name in ("rows", "hidden_size", "intermediate_size", "layers")),
        ("layer", ctypes.POINTER(DecodeLayerTensors)),
        ("weights_are_bfloat16", ctypes.c_int64),
        ("eps", ctypes.c_float),
        ("attention", CachedAttentionArgs),
    ]


def decode_layers(
    layer_tensors: Sequence[Optional[Sequence[paddle.Tensor]]],
    hidden_states: paddle.Tensor,
    rotary: Tuple[Tuple[paddle.Tensor, paddle.Tensor], Tuple[paddle.Tensor, paddle.Tensor]],
    attention_bias: Optional[paddle.Tensor],
    cache_columns: Tuple[Sequence[paddle.Tensor], Sequence[paddle.Tensor], int, Optional[paddle.Tensor]],
    config,
) -> Optional[paddle.Tensor]:
    """A one-token step through every decoder layer in one call of our kernels; `[B, 1, hidden]` float32 after the
    last layer (before the final norm), or None where they do not apply (then the layers run one by one).

    `layer_tensors` holds each layer's tensors in `LAYER_TENSORS` order (None for a layer the kernels cannot run,
    e.g. one with LoRA); the seven product weights all float32 or all bfloat16. `rotary` and `attention_bias` are
    as for `cached_attention`; `cache_columns` is `(keys per layer, values per layer, position, positions)` of the
    cache, written in place. `config` gives the sizes (hidden, intermediate, heads, KV heads, head_dim, eps).
    """
    batch = hidden_states.shape[0]
    keys, values, position, positions = cache_columns
    if hidden_states.shape[1] != 1 or not few_rows(hidden_states) or not kernels_apply(hidden_states, keys[0]):
        return None
    if any(tensors is None for tensors in layer_tensors):
        return None
    weight_dtypes = {tensors[index].dtype for tensors in layer_tensors for index in PRODUCT_WEIGHT_INDICES}
    if len(weight_dtypes) != 1 or not weight_dtypes <= set(PRODUCT_WEIGHT_DTYPES):
        return None
    attention, held = attention_args(
        rotary, keys[0], position, positions, attention_bias, batch, config.num_attention_heads, config.head_dim, 1
    )
    layers = (DecodeLayerTensors * len(layer_tensors))(
        *(
            DecodeLayerTensors(
                *(tensor.data_ptr() for tensor in tensors), keys[index].data_ptr(), values[index].data_ptr()
            )
            for index, tensors in enumerate(layer_tensors)
        )
    )
    hidden = hidden_states.contiguous().clone()  # the kernel writes it in place
    args = DecodeLayersArgs(
        hidden=hidden.data_ptr(),
        rows=batch,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        layers=len(layer_tensors),
        layer=layers,
        weights_are_bfloat16=int(weight_dtypes == {paddle.bfloat16}),
        eps=config.rms_norm_eps,
        attention=attention,
    )
    load_library().decode_layers(ctypes.byref(args), device.cpu_threads())  # `held` is alive until here
    return hidden


class VisionAttentionArgs(ctypes.Structure):
    """`vision_attention`'s arguments in decode_cpu.cpp (the same fields, in the same order)."""

    _fields_ = [
        *((name, ctypes.c_void_p) for name in ("qkv", "rel_h", "rel_w")),
        *((name, ctypes.c_int64) for name in ("batch", "heads", "head_dim", "height", "width")),
        ("out", ctypes.c_void_p),
    ]


TABLE_KEY_MULTIPLE = 8  # the kernel reads a relative-position table's keys a vector (kFloatsPerVector) at a time


def relative_table(table: paddle.Tensor) -> paddle.Tensor:
    """A gathered relative-position table `R[q, k, c]` `[size, size, d]` as our vision attention kernel reads it:
    `[size, d, padded]` float32 with `R[q, k, c]` at `[q, c, k]`, zeros after the `size` keys (padded to a multiple
    of `TABLE_KEY_MULTIPLE`)."""
    by_feature = paddle.einsum("qkc->qck", table)
    padding = -table.shape[1] % TABLE_KEY_MULTIPLE
    if padding:
        by_feature = paddle.concat([by_feature, paddle.zeros([*by_feature.shape[:2], padding], table.dtype)], axis=2)
    return by_feature.contiguous()


def vision_attention(qkv: paddle.Tensor, table_h: paddle.Tensor, table_w: paddle.Tensor) -> Optional[paddle.Tensor]:
    """The vision encoder's softmax attention with decomposed relative positions, through our kernel: float32
    `[N, heads, head_dim, H * W]`, or None where it does not apply.

    `qkv` is the feature-major qkv projection `[N, 3, heads, head_dim, H * W]` (queries unscaled) of an `[H, W]` map;
    `table_h` `[H, H, head_dim]` and `table_w` `[W, W, head_dim]` are the gathered relative-position tables (R_h,
    R_w). The scores are `q . k / sqrt(head_dim) + q . R_h[qy, ky] + q . R_w[qx, kx]`, the relative terms taken in the
    kernel.
    """
    if not (kernels_apply(qkv, table_h) and kernels_apply(qkv, table_w)):
        return None
    batch, _, heads, head_dim, tokens = qkv.shape
    height, width = table_h.shape[0], table_w.shape[0]
    qkv = qkv.contiguous()
    tables = relative_table(table_h), relative_table(table_w)
    output = _C_ops.empty([batch, heads, head_dim, tokens], qkv.dtype, CPU)
    args = VisionAttentionArgs(
        qkv=qkv.data_ptr(),
        rel_h=tables[0].data_ptr(),
        rel_w=tables[1].data_ptr(),
        batch=batch,
        heads=heads,
        head_dim=head_dim,
        height=height,
        width=width,
        out=output.data_ptr(),
    )
    load_library().vision_attention(ctypes.byref(args), device.cpu_threads())  # `tables` are alive until here
    return output
