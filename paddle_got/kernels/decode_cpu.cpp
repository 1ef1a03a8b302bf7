// Our CPU kernels, built and loaded by decode_cpu.py (AVX2 + FMA; decode_cpu_supported() tells whether this CPU can
// run them): the memory-bound work of a float32 decode step, a prefill's attention, and the vision encoder's.
//
// skinny_matmul: a few rows (1-8, one per sequence) times a large weight matrix, read once from memory. MKL runs a
// one-row product on one core (~22 GB/s here) and an eight-row product at ~6-15 GB/s; these loops keep every core
// streaming (~32 and ~22 GB/s).
//   out[rows, out_features] = x[rows, in_features] @ W (+ bias)
//   W is [in_features, out_features] (a Paddle Linear weight) or [out_features, in_features] (an embedding table),
//   float32 or bfloat16 (skinny_matmul_bf16: widened to float32 in registers, which is exact, so only the
//   summation order differs from a float32 product; half the bytes read).
//
// cached_attention: one layer's attention for the new tokens of each sequence (one in a decode step, the prompt in a
// prefill): rotary on the new queries and keys, the keys and values written into the token-major KV cache, and
// attention over its filled rows only (causally, without materialising a [tokens, tokens] score matrix).
//
// rms_norm, silu_mul: the decoder's RMSNorm and SwiGLU product, for a step's few rows or a prompt's prefill.
//
// widen_bf16, narrow_bf16: bfloat16 -> float32 (exact) and float32 -> bfloat16 (to nearest, ties to even), the latter
// for the inputs of oneDNN's bfloat16 GEMM (decode_cpu.bfloat16_matmul).
//
// amx_linear: a prompt's product in bfloat16 on AMX's tiles (x rounded to bfloat16 as narrow_bf16 does, float32 sums),
// where the CPU has AMX (amx_linear_supported); decode_cpu.bfloat16_linear takes oneDNN's GEMM elsewhere.
//
// decode_layers: a whole one-token step through every decoder layer (RMSNorm, q/k/v, cached_attention, o, the
// residual, RMSNorm, SwiGLU, the residual) in one call, the pieces above run back to back: what a step costs
// beyond its reads is then one call from Python instead of ~10 calls and Paddle ops per layer.
//
// vision_attention: the vision encoder's attention (decomposed relative positions) on register tiles, the score rows
// of a few queries at a time kept in cache (Paddle's path adds the relative terms as height + width extra features
// to the score matmul, three times its products on GOT's 64 x 64 map, and runs softmax over score blocks in memory).
// Its tiles and a prompt's run on AVX-512 where the CPU has it (compiled for that target alone, chosen at run time by
// use_wide_tiles): attention is bound by arithmetic, where the products are bound by reads, but for a few rows on
// bfloat16 weights, whose panels take AVX-512 too (see rows_in_by_out).

#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

// Compilers that know AMX's intrinsics and CPU feature names: the AMX products are built only with one.
#if defined(__clang__) ? __clang_major__ >= 12 : __GNUC__ >= 11
#define PADDLE_GOT_AMX 1
#endif

namespace {

constexpr int64_t kFloatsPerVector = 8;
constexpr int64_t kPanelVectors = 2;                 // a panel is 16 output columns: one 64-byte line per weight row
constexpr int64_t kPanelWidth = kPanelVectors * kFloatsPerVector;
constexpr int64_t kRowsPerBlock = 4;                 // x rows held in registers at once
constexpr int64_t kPanelsPrefetchedAhead = 2;
constexpr int64_t kWidePanelWidth = 32;   // an AVX-512 panel: two 16-float registers per x row
constexpr int64_t kWideRowsPerBlock = 8;  // x rows held in registers at once on AVX-512 (16 accumulators)

struct Range {
    int64_t begin, end;
};

// The thread's share of `count` items, in contiguous order, each share a multiple of `granule` but the last.
Range share(int64_t count, int64_t granule) {
    const int thread = omp_get_thread_num(), threads = omp_get_num_threads();
    const int64_t units = count / granule;
    Range range{units * thread / threads * granule, units * (thread + 1) / threads * granule};
    if (thread == threads - 1) range.end = count;
    return range;
}

using bfloat16 = uint16_t;  // the upper half of a float32's bits

bool tiles_are_wide = false;  // set by use_wide_tiles

// Whether the attention tiles and a few rows' product panels run on AVX-512 (see use_wide_tiles).
bool wide_tiles() { return tiles_are_wide; }

// Eight weights from memory as float32.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const bfloat16* p) {
    const __m128i halves = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(halves), 16));
}

inline float to_float(float value) { return value; }
inline float to_float(bfloat16 value) {
    const uint32_t bits = static_cast<uint32_t>(value) << 16;
    float result;
    std::memcpy(&result, &bits, sizeof(result));
    return result;
}

float horizontal_sum(__m256 vector) {
    const __m128 pairs = _mm_add_ps(_mm256_castps256_ps128(vector), _mm256_extractf128_ps(vector, 1));
    const __m128 halves = _mm_add_ps(pairs, _mm_movehl_ps(pairs, pairs));
    return _mm_cvtss_f32(_mm_add_ss(halves, _mm_shuffle_ps(halves, halves, 1)));
}

// The ROWS weight rows from row k (rows `row_stride` weights apart) and x[k + r] broadcast, for a one-row sweep.
template <int ROWS, typename W>
inline void sweep_rows(const float* x, const W* weight, int64_t row_stride, int64_t k, const W* (&rows)[ROWS],
                       __m256 (&xs)[ROWS]) {
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
        rows[r] = weight + (k + r) * row_stride;
        xs[r] = _mm256_broadcast_ss(x + k + r);
    }
}

// One row: partial[0:out_features] = x[begin:end] @ W[begin:end, 0:out_features], W's rows `row_stride` weights
// apart, ROWS weight rows per sweep (for a product, each thread streams its own contiguous slab of W). Long weight
// rows are read eight at a time, so that the running sums are loaded and stored once per eight rows; short ones one
// at a time, in memory order, which the hardware prefetchers follow best (see kLongRowBytes).
template <int ROWS, typename W>
void one_row_slab(const float* x, const W* weight, int64_t row_stride, int64_t out_features, Range depth,
                  float* partial) {
    std::fill(partial, partial + out_features, 0.0f);
    int64_t k = depth.begin;
    for (; k + ROWS <= depth.end; k += ROWS) {
        const W* rows[ROWS];
        __m256 xs[ROWS];
        sweep_rows(x, weight, row_stride, k, rows, xs);
        int64_t j = 0;
        for (; j + kFloatsPerVector <= out_features; j += kFloatsPerVector) {
            __m256 sum_even = _mm256_loadu_ps(partial + j), sum_odd = _mm256_setzero_ps();
#pragma GCC unroll 8
            for (int r = 0; r < ROWS; r += 2) {
                sum_even = _mm256_fmadd_ps(xs[r], load8(rows[r] + j), sum_even);
                if (r + 1 < ROWS) sum_odd = _mm256_fmadd_ps(xs[r + 1], load8(rows[r + 1] + j), sum_odd);
            }
            _mm256_storeu_ps(partial + j, _mm256_add_ps(sum_even, sum_odd));
        }
        for (; j < out_features; ++j) {
            float total = partial[j];
            for (int r = 0; r < ROWS; ++r) total += x[k + r] * to_float(rows[r][j]);
            partial[j] = total;
        }
    }
    for (; k < depth.end; ++k)
        for (int64_t j = 0; j < out_features; ++j) partial[j] += x[k] * to_float(weight[k * row_stride + j]);
}

// Sixteen bfloat16 weights as float32: columns 0, 2, ..., 14 in `even` and 1, 3, ..., 15 in `odd` (a shift and a
// mask of one 32-byte load: cheaper than widening eight at a time, see one_row_in_by_out).
inline void load16_even_odd(const bfloat16* p, __m256& even, __m256& odd) {
    const __m256i pairs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    even = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
    odd = _mm256_castsi256_ps(_mm256_and_si256(pairs, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

// Where column j of a partial sum written by one_row_slab_even_odd is: each whole 16-column block holds its even
// columns, then its odd ones; columns after the last whole block are in order.
inline int64_t even_odd_index(int64_t j, int64_t out_features) {
    const int64_t i = j % kPanelWidth;
    if (j >= out_features / kPanelWidth * kPanelWidth) return j;
    return j - i + (i % 2 ? kFloatsPerVector + i / 2 : i / 2);
}

// One row, bfloat16 W [in, out]: partial = x[begin:end] @ W[begin:end, :] (laid out as even_odd_index says), eight
// weight rows per sweep, so that the running sums are loaded and stored once per eight rows, the next eight rows
// fetched meanwhile, into the cache level HINT (see next_sweep_into_l1). One row at a time, or without the fetch, read
// at 14-15 GB/s on a 2-core Xeon; this 19-20.
template <int HINT>
void one_row_slab_even_odd(const float* x, const bfloat16* weight, int64_t out_features, Range depth, float* partial) {
    constexpr int kRows = 8;
    constexpr int64_t kBfloat16PerLine = 32;
    const int64_t blocked = out_features / kPanelWidth * kPanelWidth;
    std::fill(partial, partial + out_features, 0.0f);
    int64_t k = depth.begin;
    for (; k + kRows <= depth.end; k += kRows) {
        const bfloat16* rows[kRows];
        __m256 xs[kRows];
        sweep_rows(x, weight, out_features, k, rows, xs);
        const int64_t next_rows = kRows * out_features;
        for (int64_t j = 0; j < blocked; j += kPanelWidth) {
            __m256 sum_even = _mm256_loadu_ps(partial + j), sum_odd = _mm256_loadu_ps(partial + j + kFloatsPerVector);
#pragma GCC unroll 8
            for (int r = 0; r < kRows; ++r) {
                if (j % kBfloat16PerLine == 0)
                    _mm_prefetch(reinterpret_cast<const char*>(rows[r] + next_rows + j), static_cast<_mm_hint>(HINT));
                __m256 even, odd;
                load16_even_odd(rows[r] + j, even, odd);
                sum_even = _mm256_fmadd_ps(xs[r], even, sum_even);
                sum_odd = _mm256_fmadd_ps(xs[r], odd, sum_odd);
            }
            _mm256_storeu_ps(partial + j, sum_even);
            _mm256_storeu_ps(partial + j + kFloatsPerVector, sum_odd);
        }
        for (int64_t j = blocked; j < out_features; ++j)
            for (int r = 0; r < kRows; ++r) partial[j] += x[k + r] * to_float(rows[r][j]);
    }
    for (; k < depth.end; ++k)
        for (int64_t j = 0; j < out_features; ++j)
            partial[even_odd_index(j, out_features)] += x[k] * to_float(weight[k * out_features + j]);
}

// `rows` x rows, in parallel by depth: each thread sums its share of W's rows (`slab(depth, partial)`, in multiples
// of `granule`, into its partial [rows, out_features]), then out[r, j] = bias[j] + the threads' partial sums at
// [r, index(j)], each thread a share of the columns.
template <typename Slab, typename Index>
void sweep_depth_slabs(int64_t in_features, int64_t rows, int64_t out_features, int64_t granule, const float* bias,
                       float* out, int num_threads, Slab slab, Index index) {
    thread_local std::vector<float> partials;
    const int64_t values = rows * out_features;
    partials.resize(static_cast<size_t>(values) * num_threads);
    float* const partial_base = partials.data();
#pragma omp parallel num_threads(num_threads)
    {
        const int thread = omp_get_thread_num(), threads = omp_get_num_threads();
        slab(share(in_features, granule), partial_base + thread * values);
#pragma omp barrier
        const Range columns = share(out_features, 1);
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t j = columns.begin; j < columns.end; ++j) {
                float total = bias ? bias[j] : 0.0f;
                const int64_t at = r * out_features + index(j);
                for (int t = 0; t < threads; ++t) total += partial_base[t * values + at];
                out[r * out_features + j] = total;
            }
    }
}

template <int ROWS>
void one_row_in_by_out_sweeping(const float* x, int64_t in_features, const float* weight, int64_t out_features,
                                const float* bias, float* out, int num_threads) {
    sweep_depth_slabs(
        in_features, 1, out_features, ROWS, bias, out, num_threads,
        [=](Range depth, float* partial) { one_row_slab<ROWS>(x, weight, out_features, out_features, depth, partial); },
        [](int64_t j) { return j; });
}

// One row times W [in, out]. float32: weight rows shorter than kLongRowBytes are read one at a time, longer ones
// eight at a time, so that the running sums are loaded and stored once per eight rows (measured on a 2-core EPYC
// with 896 and 4864 outputs, weights streamed from memory). bfloat16: eight at a time, sixteen weights per load
// (load16_even_odd): with GOT's 1024 and 2816 outputs, faster than widening eight weights per load.
constexpr int64_t kLongRowBytes = 4096;

void one_row_in_by_out(const float* x, int64_t in_features, const float* weight, int64_t out_features,
                       const float* bias, float* out, int num_threads) {
    if (out_features * static_cast<int64_t>(sizeof(float)) >= kLongRowBytes)
        one_row_in_by_out_sweeping<8>(x, in_features, weight, out_features, bias, out, num_threads);
    else
        one_row_in_by_out_sweeping<1>(x, in_features, weight, out_features, bias, out, num_threads);
}

// Whether the bfloat16 one-row sweep fetches its next eight rows into L1: where L1 holds them beside the eight being
// read (48 KB on a Xeon with AMX, measured there); else into L2. On a Zen 4 EPYC's 32 KB L1 the fetched lines pushed
// out the ones still to be read: median 16.7 GB/s into L1, 30.0 into L2 (GOT's layer shapes, two threads).
constexpr long kL1BytesForNextSweep = 48 * 1024;

bool next_sweep_into_l1() {
    static const bool into_l1 = sysconf(_SC_LEVEL1_DCACHE_SIZE) >= kL1BytesForNextSweep;
    return into_l1;
}

void one_row_in_by_out(const float* x, int64_t in_features, const bfloat16* weight, int64_t out_features,
                       const float* bias, float* out, int num_threads) {
    const bool into_l1 = next_sweep_into_l1();
    sweep_depth_slabs(
        in_features, 1, out_features, 8, bias, out, num_threads,
        [=](Range depth, float* partial) {
            if (into_l1)
                one_row_slab_even_odd<_MM_HINT_T0>(x, weight, out_features, depth, partial);
            else
                one_row_slab_even_odd<_MM_HINT_T1>(x, weight, out_features, depth, partial);
        },
        [=](int64_t j) { return even_odd_index(j, out_features); });
}

// ROWS x rows, one 16-column panel, weight rows [depth.begin, depth.end): accumulators stay in registers; `out`
// holds the running sum between passes. The panel `prefetch_offset` columns ahead is fetched meanwhile.
template <int ROWS, typename W>
void panel_pass(const float* x, int64_t in_features, const W* weight, int64_t out_features, Range depth,
                bool first_pass, int64_t prefetch_offset, float* out) {
    __m256 sum[ROWS][kPanelVectors];
#pragma GCC unroll 4
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 2
        for (int v = 0; v < kPanelVectors; ++v) sum[r][v] = _mm256_setzero_ps();
    for (int64_t k = depth.begin; k < depth.end; ++k) {
        const W* row = weight + k * out_features;
        _mm_prefetch(reinterpret_cast<const char*>(row + prefetch_offset), _MM_HINT_T0);
        __m256 w[kPanelVectors];
#pragma GCC unroll 2
        for (int v = 0; v < kPanelVectors; ++v) w[v] = load8(row + v * kFloatsPerVector);
#pragma GCC unroll 4
        for (int r = 0; r < ROWS; ++r) {
            const __m256 xr = _mm256_broadcast_ss(x + r * in_features + k);
#pragma GCC unroll 2
            for (int v = 0; v < kPanelVectors; ++v) sum[r][v] = _mm256_fmadd_ps(xr, w[v], sum[r][v]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 2
        for (int v = 0; v < kPanelVectors; ++v) {
            float* target = out + r * out_features + v * kFloatsPerVector;
            _mm256_storeu_ps(target, first_pass ? sum[r][v] : _mm256_add_ps(sum[r][v], _mm256_loadu_ps(target)));
        }
}

// body(std::integral_constant<int, count>) for a count of 1 ... MAX known at compile time.
template <int MAX, typename Body>
inline void with_row_count(int64_t count, const Body& body) {
    if constexpr (MAX > 1)
        if (count < MAX) return with_row_count<MAX - 1>(count, body);
    body(std::integral_constant<int, MAX>{});
}

// Every row of x through `pass` (panel_pass or panel_pass_wide) over one panel, BLOCK rows at a time.
template <int BLOCK, typename Pass>
void panel_pass_rows(int64_t rows, const float* x, int64_t in_features, int64_t out_features, float* out,
                     const Pass& pass) {
    for (int64_t r = 0; r < rows; r += BLOCK)
        with_row_count<BLOCK>(std::min<int64_t>(BLOCK, rows - r), [&](auto count) {
            pass(count, x + r * in_features, out + r * out_features);
        });
}

// Sixteen weights from memory as float32, on AVX-512.
__attribute__((target("avx512f"))) inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }

__attribute__((target("avx512f"))) inline __m512 load16(const bfloat16* p) {
    const __m256i halves = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(halves), 16));
}

// panel_pass on AVX-512: ROWS x rows (up to eight), one 32-column panel (one 64-byte line per weight row in
// bfloat16, two in float32), 2 x ROWS accumulators of 16 floats.
template <int ROWS, typename W>
__attribute__((target("avx512f"))) void panel_pass_wide(const float* x, int64_t in_features, const W* weight,
                                                         int64_t out_features, Range depth, bool first_pass,
                                                         int64_t prefetch_offset, float* out) {
    __m512 sum[ROWS][2];
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) sum[r][0] = sum[r][1] = _mm512_setzero_ps();
    for (int64_t k = depth.begin; k < depth.end; ++k) {
        const W* row = weight + k * out_features;
        for (int64_t line = 0; line < kWidePanelWidth * int64_t(sizeof(W)); line += 64)
            _mm_prefetch(reinterpret_cast<const char*>(row + prefetch_offset) + line, _MM_HINT_T0);
        const __m512 low = load16(row), high = load16(row + 16);
#pragma GCC unroll 8
        for (int r = 0; r < ROWS; ++r) {
            const __m512 xr = _mm512_set1_ps(x[r * in_features + k]);
            sum[r][0] = _mm512_fmadd_ps(xr, low, sum[r][0]);
            sum[r][1] = _mm512_fmadd_ps(xr, high, sum[r][1]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r)
        for (int v = 0; v < 2; ++v) {
            float* target = out + r * out_features + 16 * v;
            _mm512_storeu_ps(target, first_pass ? sum[r][v] : _mm512_add_ps(sum[r][v], _mm512_loadu_ps(target)));
        }
}


// Whether the CPU has AMX tiles (a Xeon of Sapphire Rapids or later), whatever the OS allows (see amx_usable).
bool cpu_has_amx() {
#ifdef PADDLE_GOT_AMX
    static const bool has_amx = __builtin_cpu_supports("amx-tile");
    return has_amx;
#else
    return false;
#endif
}

// Whether a few rows' products take AVX-512, by weight type: chosen from the CPU with the wide tiles
// (use_wide_tiles), each where it was measured faster, or by a test (use_wide_products).
// - bfloat16 weights, on a CPU with AMX (a Xeon's two 512-bit FMA units): 32-column panels with eight rows in
//   registers (panel_pass_wide) and dot_block_wide. They were slower on a Zen 4 EPYC, whose units are 256 bits wide.
// - float32 weights, on a CPU with AVX-512 but no AMX (the Zen 4 EPYC): depth slabs (rows_in_by_out_slabs) and
//   dot_block_wide. AVX-512 column panels were slower on the Xeon (122 -> 129 ms for eight float32 rows); slabs
//   were not measured there.
bool wide_bfloat16_products = false, wide_float32_products = false;

template <typename W>
bool wide_products() {
    return std::is_same<W, bfloat16>::value ? wide_bfloat16_products : wide_float32_products;
}

// Weight rows per pass over a panel in rows_in_by_out, each of them a stream of reads, each pass ending in a load and
// store of the running sums. On a 2-core Xeon with AMX, 32 (eight rows: 128 read at 7 GB/s, 32 at 13-15). On a
// 2-core Zen 2 EPYC (AVX2 only), 64: GOT's seven layer products, 24 layers, weights from memory, 32 -> 64 took eight
// float32 rows from 68 to 57 ms, four from 82 to 58 ms, eight bfloat16 rows from 53 to 46 ms (48 and 96 slower).
int64_t depth_per_block() { return cpu_has_amx() ? 32 : 64; }

// Several rows, W [in, out], by columns: each thread owns a run of panels (16 columns; 32 on AVX-512) and sweeps
// them one depth block (depth_per_block) at a time, so the x rows reuse each weight line from L1 and the weight
// stream moves along whole rows. Eight bfloat16 rows are bound by the widening and the multiplies, which AVX-512
// halves (a GOT step 102 -> 89 ms on the Xeon); eight float32 rows are bound by reads, and ran slower on the wide
// panels (122 -> 129 ms).
template <typename W>
void rows_in_by_out_columns(const float* x, int64_t rows, int64_t in_features, const W* weight, int64_t out_features,
                            const float* bias, float* out, int num_threads) {
    const bool wide = wide_products<W>();
    const int64_t width = wide ? kWidePanelWidth : kPanelWidth;
    const int64_t panel_columns = out_features / width * width;
    const int64_t block_depth = depth_per_block();
#pragma omp parallel num_threads(num_threads)
    {
        const Range columns = share(panel_columns, width);
        for (int64_t k = 0; k < in_features; k += block_depth) {
            const Range depth{k, std::min(in_features, k + block_depth)};
            for (int64_t j = columns.begin; j + width <= columns.end; j += width) {
                const int64_t ahead = std::min(kPanelsPrefetchedAhead * width, columns.end - width - j);
                const W* panel = weight + j;
                const bool first = k == 0;
                if (wide)
                    panel_pass_rows<kWideRowsPerBlock>(rows, x, in_features, out_features, out + j,
                                                       [&](auto count, const float* xs, float* sums) {
                                                           panel_pass_wide<decltype(count)::value>(
                                                               xs, in_features, panel, out_features, depth, first,
                                                               ahead, sums);
                                                       });
                else
                    panel_pass_rows<kRowsPerBlock>(rows, x, in_features, out_features, out + j,
                                                   [&](auto count, const float* xs, float* sums) {
                                                       panel_pass<decltype(count)::value>(xs, in_features, panel,
                                                                                          out_features, depth, first,
                                                                                          ahead, sums);
                                                   });
            }
        }
        // The last thread also takes the columns after the last whole panel, one at a time.
        const int64_t owned_end = omp_get_thread_num() == omp_get_num_threads() - 1 ? out_features : columns.end;
        for (int64_t j = columns.end; j < owned_end; ++j)
            for (int64_t r = 0; r < rows; ++r) {
                float total = 0.0f;
                for (int64_t k = 0; k < in_features; ++k)
                    total += x[r * in_features + k] * to_float(weight[k * out_features + j]);
                out[r * out_features + j] = total;
            }
        if (bias)
            for (int64_t r = 0; r < rows; ++r)
                for (int64_t j = columns.begin; j < owned_end; ++j) out[r * out_features + j] += bias[j];
    }
}

constexpr int64_t kSlabSweepDepth = 16;  // weight rows per sweep in rows_in_by_out_slabs (8 and 32 were slower)

// Several rows on AVX-512, W [in, out], by depth: each thread owns a contiguous slab of W's rows and sweeps it
// kSlabSweepDepth rows at a time across every column (32-column panels, eight x rows in registers), reading its slab
// in memory order as one row does (sweep_depth_slabs adds the threads' partial sums). On the Zen 4 EPYC, GOT's seven
// layer products over 24 layers, float32 weights from memory, against rows_in_by_out_columns: on 2 MB pages (numpy's
// buffers) four rows 67-74 -> 48-63 ms, eight 71-73 -> 49-66 ms (AVX-512 column panels took 90 and 94 ms); on a
// loaded model's 4 KB pages four rows 57-68 -> 50-62 ms, eight the same either way (48-68 ms).
template <typename W>
void rows_in_by_out_slabs(const float* x, int64_t rows, int64_t in_features, const W* weight, int64_t out_features,
                          const float* bias, float* out, int num_threads) {
    const int64_t panel_columns = out_features / kWidePanelWidth * kWidePanelWidth;
    const auto slab_sums = [=](Range slab, float* sums) {
        if (slab.begin == slab.end) std::fill(sums, sums + rows * out_features, 0.0f);
        for (int64_t k = slab.begin; k < slab.end; k += kSlabSweepDepth) {
            const Range depth{k, std::min(slab.end, k + kSlabSweepDepth)};
            const bool first = k == slab.begin;
            for (int64_t j = 0; j < panel_columns; j += kWidePanelWidth) {
                const int64_t ahead =
                    std::min(kPanelsPrefetchedAhead * kWidePanelWidth, out_features - kWidePanelWidth - j);
                panel_pass_rows<kWideRowsPerBlock>(rows, x, in_features, out_features, sums + j,
                                                   [&](auto count, const float* xs, float* panel_sums) {
                                                       panel_pass_wide<decltype(count)::value>(
                                                           xs, in_features, weight + j, out_features, depth, first,
                                                           ahead, panel_sums);
                                                   });
            }
            for (int64_t r = 0; r < rows; ++r)  // the columns after the last whole panel
                for (int64_t j = panel_columns; j < out_features; ++j) {
                    float total = first ? 0.0f : sums[r * out_features + j];
                    for (int64_t d = depth.begin; d < depth.end; ++d)
                        total += x[r * in_features + d] * to_float(weight[d * out_features + j]);
                    sums[r * out_features + j] = total;
                }
        }
    };
    sweep_depth_slabs(in_features, rows, out_features, kSlabSweepDepth, bias, out, num_threads, slab_sums,
                      [](int64_t j) { return j; });
}

// Several rows, W [in, out]: by depth slabs where the weights' products are wide (float32 on AVX-512), else by
// column panels.
template <typename W>
void rows_in_by_out(const float* x, int64_t rows, int64_t in_features, const W* weight, int64_t out_features,
                    const float* bias, float* out, int num_threads) {
    if (std::is_same<W, float>::value && wide_products<W>())
        rows_in_by_out_slabs(x, rows, in_features, weight, out_features, bias, out, num_threads);
    else
        rows_in_by_out_columns(x, rows, in_features, weight, out_features, bias, out, num_threads);
}

// ROWS x rows against OUTPUTS weight rows of W [out, in] (rows `weight_stride` floats apart): dot products,
// accumulated in registers. With `prefetch`, the OUTPUTS rows there (the next block's) are fetched meanwhile.
template <int ROWS, int OUTPUTS, typename W>
void dot_block(const float* x, int64_t in_features, const W* weight, int64_t weight_stride, const float* bias,
               int64_t out_features, float* out, const W* prefetch = nullptr) {
    constexpr int64_t kWeightsPerLine = 64 / sizeof(W);
    __m256 sum[ROWS][OUTPUTS];
#pragma GCC unroll 4
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
        for (int o = 0; o < OUTPUTS; ++o) sum[r][o] = _mm256_setzero_ps();
    const int64_t vector_depth = in_features / kFloatsPerVector * kFloatsPerVector;
    for (int64_t k = 0; k < vector_depth; k += kFloatsPerVector) {
        if (prefetch && k % kWeightsPerLine == 0)
            for (int o = 0; o < OUTPUTS; ++o)
                _mm_prefetch(reinterpret_cast<const char*>(prefetch + o * weight_stride + k), _MM_HINT_T0);
        __m256 w[OUTPUTS];
#pragma GCC unroll 4
        for (int o = 0; o < OUTPUTS; ++o) w[o] = load8(weight + o * weight_stride + k);
#pragma GCC unroll 4
        for (int r = 0; r < ROWS; ++r) {
            const __m256 xr = _mm256_loadu_ps(x + r * in_features + k);
#pragma GCC unroll 4
            for (int o = 0; o < OUTPUTS; ++o) sum[r][o] = _mm256_fmadd_ps(xr, w[o], sum[r][o]);
        }
    }
    for (int r = 0; r < ROWS; ++r)
        for (int o = 0; o < OUTPUTS; ++o) {
            float total = horizontal_sum(sum[r][o]) + (bias ? bias[o] : 0.0f);
            for (int64_t k = vector_depth; k < in_features; ++k)
                total += x[r * in_features + k] * to_float(weight[o * weight_stride + k]);
            out[r * out_features + o] = total;
        }
}

// out = x . w (+ bias) for one row of W [out, in], read in memory order with four accumulators over the depth
// (reading four weight rows side by side, as dot_block does, reached 15 GB/s in bfloat16 here; this 31).
template <typename W>
void dot_row(const float* x, int64_t in_features, const W* w, const float* bias, float* out) {
    constexpr int64_t kPrefetchAhead = 512;  // weights
    __m256 sum[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t k = 0;
    for (; k + 4 * kFloatsPerVector <= in_features; k += 4 * kFloatsPerVector) {
        _mm_prefetch(reinterpret_cast<const char*>(w + k + kPrefetchAhead), _MM_HINT_T0);
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v)
            sum[v] = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + v * kFloatsPerVector), load8(w + k + v * kFloatsPerVector),
                                     sum[v]);
    }
    float total = horizontal_sum(_mm256_add_ps(_mm256_add_ps(sum[0], sum[1]), _mm256_add_ps(sum[2], sum[3])));
    for (; k < in_features; ++k) total += x[k] * to_float(w[k]);
    *out = total + (bias ? *bias : 0.0f);
}

// dot_block on AVX-512: sixteen depth values a step, ROWS (up to eight) x OUTPUTS accumulators.
template <int ROWS, int OUTPUTS, typename W>
__attribute__((target("avx512f"))) void dot_block_wide(const float* x, int64_t in_features, const W* weight,
                                                        const float* bias, int64_t out_features, float* out,
                                                        const W* prefetch) {
    constexpr int64_t kWeightsPerLine = 64 / sizeof(W);
    __m512 sum[ROWS][OUTPUTS];
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
        for (int o = 0; o < OUTPUTS; ++o) sum[r][o] = _mm512_setzero_ps();
    const int64_t vector_depth = in_features / 16 * 16;
    for (int64_t k = 0; k < vector_depth; k += 16) {
        if (prefetch && k % kWeightsPerLine == 0)
            for (int o = 0; o < OUTPUTS; ++o)
                _mm_prefetch(reinterpret_cast<const char*>(prefetch + o * in_features + k), _MM_HINT_T0);
        __m512 w[OUTPUTS];
#pragma GCC unroll 4
        for (int o = 0; o < OUTPUTS; ++o) w[o] = load16(weight + o * in_features + k);
#pragma GCC unroll 8
        for (int r = 0; r < ROWS; ++r) {
            const __m512 xr = _mm512_loadu_ps(x + r * in_features + k);
#pragma GCC unroll 4
            for (int o = 0; o < OUTPUTS; ++o) sum[r][o] = _mm512_fmadd_ps(xr, w[o], sum[r][o]);
        }
    }
    for (int r = 0; r < ROWS; ++r)
        for (int o = 0; o < OUTPUTS; ++o) {
            float total = _mm512_reduce_add_ps(sum[r][o]) + (bias ? bias[o] : 0.0f);
            for (int64_t k = vector_depth; k < in_features; ++k)
                total += x[r * in_features + k] * to_float(weight[o * in_features + k]);
            out[r * out_features + o] = total;
        }
}

// Every row of x against OUTPUTS weight rows, four x rows at a time (eight on AVX-512, see wide_products); the first
// block also fetches `prefetch`'s rows (reading the next block from memory while computing: 1.4x for the eight-row
// bfloat16 head on the Xeon).
template <int OUTPUTS, typename W>
void dot_block_rows(int64_t rows, const float* x, int64_t in_features, const W* weight, const float* bias,
                    int64_t out_features, float* out, const W* prefetch) {
    if (wide_products<W>()) {
        for (int64_t r = 0; r < rows; r += kWideRowsPerBlock) {
            const W* ahead = r == 0 ? prefetch : nullptr;
            with_row_count<kWideRowsPerBlock>(std::min(kWideRowsPerBlock, rows - r), [&](auto count) {
                dot_block_wide<decltype(count)::value, OUTPUTS>(x + r * in_features, in_features, weight, bias,
                                                                out_features, out + r * out_features, ahead);
            });
        }
        return;
    }
    for (int64_t r = 0; r < rows; r += kRowsPerBlock) {
        const W* ahead = r == 0 ? prefetch : nullptr;
        with_row_count<kRowsPerBlock>(std::min(kRowsPerBlock, rows - r), [&](auto count) {
            dot_block<decltype(count)::value, OUTPUTS, W>(x + r * in_features, in_features, weight, in_features, bias,
                                                          out_features, out + r * out_features, ahead);
        });
    }
}

// W [out, in]: each thread owns a contiguous run of weight rows; one x row reads them one at a time (dot_row),
// several x rows three at a time (4 x 3 accumulators: ~21 GB/s at eight rows here, against ~17 with 4 x 2), the next
// three fetched meanwhile.
template <typename W>
void rows_out_by_in(const float* x, int64_t rows, int64_t in_features, const W* weight, int64_t out_features,
                    const float* bias, float* out, int num_threads) {
    const int64_t step = rows == 1 ? 1 : 3;
#pragma omp parallel num_threads(num_threads)
    {
        const Range outputs = share(out_features, step);
        int64_t o = outputs.begin;
        for (; o + step <= outputs.end; o += step) {
            const W* block_weight = weight + o * in_features;
            const float* block_bias = bias ? bias + o : nullptr;
            const W* next_block = o + 2 * step <= outputs.end ? block_weight + step * in_features : nullptr;
            if (rows == 1) dot_row(x, in_features, block_weight, block_bias, out + o);
            else dot_block_rows<3, W>(rows, x, in_features, block_weight, block_bias, out_features, out + o, next_block);
        }
        for (; o < outputs.end; ++o)
            dot_block_rows<1, W>(rows, x, in_features, weight + o * in_features, bias ? bias + o : nullptr, out_features,
                                 out + o, static_cast<const W*>(nullptr));
    }
}

// exp(x) for x <= 0, ~1e-7 relative error (the Cephes polynomial); 0 below -87 (where float32 exp underflows).
__m256 exp_nonpositive(__m256 x) {
    const __m256 underflow = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ);
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    const __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(scale)));
}

// scores[c] = exp(scores[c] - largest) in place for c < count (largest >= each of them); returns their sum.
float exponentiate_in_place(float* scores, int64_t count, float largest) {
    const __m256 shift = _mm256_set1_ps(largest);
    __m256 total = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + kFloatsPerVector <= count; c += kFloatsPerVector) {
        const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(scores + c), shift));
        _mm256_storeu_ps(scores + c, e);
        total = _mm256_add_ps(total, e);
    }
    float sum = horizontal_sum(total);
    for (; c < count; ++c) {
        scores[c] = std::exp(scores[c] - largest);
        sum += scores[c];
    }
    return sum;
}

// The largest of values[0:count] (count >= 1), eight lanes at a time.
float largest_of(const float* values, int64_t count) {
    __m256 lanes = _mm256_set1_ps(values[0]);
    int64_t c = 0;
    for (; c + kFloatsPerVector <= count; c += kFloatsPerVector)
        lanes = _mm256_max_ps(lanes, _mm256_loadu_ps(values + c));
    alignas(32) float stored[kFloatsPerVector];
    _mm256_store_ps(stored, lanes);
    float largest = *std::max_element(stored, stored + kFloatsPerVector);
    for (; c < count; ++c) largest = std::max(largest, values[c]);
    return largest;
}

// probabilities[0:count] = softmax(scores[0:count]) in place.
void softmax_in_place(float* scores, int64_t count) {
    const float inverse = 1.0f / exponentiate_in_place(scores, count, largest_of(scores, count));
    for (int64_t k = 0; k < count; ++k) scores[k] *= inverse;
}

// scores[k] = query . keys[k, :] for k < count; keys token-major (rows of head_dim floats, one per token).
void score_tokens(const float* query, const float* keys, int64_t head_dim, int64_t count, float* scores) {
    const int64_t vectorised = head_dim / kFloatsPerVector * kFloatsPerVector;
    int64_t k = 0;
    for (; k + 4 <= count; k += 4) {
        __m256 sum[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int64_t i = 0; i < vectorised; i += kFloatsPerVector) {
            const __m256 q = _mm256_loadu_ps(query + i);
            for (int t = 0; t < 4; ++t)
                sum[t] = _mm256_fmadd_ps(q, _mm256_loadu_ps(keys + (k + t) * head_dim + i), sum[t]);
        }
        // Lane j of `pairs` holds partial sums of token j % 4, so its two halves add up to the four dot products.
        const __m256 pairs = _mm256_hadd_ps(_mm256_hadd_ps(sum[0], sum[1]), _mm256_hadd_ps(sum[2], sum[3]));
        _mm_storeu_ps(scores + k, _mm_add_ps(_mm256_castps256_ps128(pairs), _mm256_extractf128_ps(pairs, 1)));
        for (int t = 0; t < 4; ++t)
            for (int64_t i = vectorised; i < head_dim; ++i) scores[k + t] += query[i] * keys[(k + t) * head_dim + i];
    }
    for (; k < count; ++k) {
        float total = 0.0f;
        for (int64_t i = 0; i < head_dim; ++i) total += query[i] * keys[k * head_dim + i];
        scores[k] = total;
    }
}

// out[0 : 8 * VECTORS] = sum over k < count of weights[k] * rows[k, 0 : 8 * VECTORS], rows `stride` floats apart.
template <int VECTORS>
void weigh_rows(const float* weights, const float* rows, int64_t stride, int64_t count, float* out) {
    __m256 sum[VECTORS];
    for (int v = 0; v < VECTORS; ++v) sum[v] = _mm256_setzero_ps();
    for (int64_t k = 0; k < count; ++k) {
        const __m256 weight = _mm256_broadcast_ss(weights + k);
        for (int v = 0; v < VECTORS; ++v)
            sum[v] = _mm256_fmadd_ps(weight, _mm256_loadu_ps(rows + k * stride + v * kFloatsPerVector), sum[v]);
    }
    for (int v = 0; v < VECTORS; ++v) _mm256_storeu_ps(out + v * kFloatsPerVector, sum[v]);
}

// out[d] = sum over k < count of probabilities[k] * values[k, d]; values token-major like score_tokens' keys. Up to
// eight vectors of features per pass over the values, each row read once per pass.
void weigh_values(const float* probabilities, const float* values, int64_t head_dim, int64_t count, float* out) {
    constexpr int64_t kPassWidth = 8 * kFloatsPerVector;
    int64_t d = 0;
    for (; d + kPassWidth <= head_dim; d += kPassWidth)
        weigh_rows<8>(probabilities, values + d, head_dim, count, out + d);
    const float* rows = values + d;
    switch ((head_dim - d) / kFloatsPerVector) {
        case 7: weigh_rows<7>(probabilities, rows, head_dim, count, out + d); break;
        case 6: weigh_rows<6>(probabilities, rows, head_dim, count, out + d); break;
        case 5: weigh_rows<5>(probabilities, rows, head_dim, count, out + d); break;
        case 4: weigh_rows<4>(probabilities, rows, head_dim, count, out + d); break;
        case 3: weigh_rows<3>(probabilities, rows, head_dim, count, out + d); break;
        case 2: weigh_rows<2>(probabilities, rows, head_dim, count, out + d); break;
        case 1: weigh_rows<1>(probabilities, rows, head_dim, count, out + d); break;
        default: break;
    }
    for (d += (head_dim - d) / kFloatsPerVector * kFloatsPerVector; d < head_dim; ++d) {
        float total = 0.0f;
        for (int64_t k = 0; k < count; ++k) total += probabilities[k] * values[k * head_dim + d];
        out[d] = total;
    }
}

// One head: out = softmax(query . K[:count] + bias) . V[:count] (query already scaled), K and V token-major
// [tokens, head_dim]: each head's cache is one contiguous block, read front to back.
void attend_one_head(const float* query, int64_t head_dim, const float* keys, const float* values, int64_t count,
                     const float* bias, float* scores, float* out) {
    score_tokens(query, keys, head_dim, count, scores);
    if (bias)
        for (int64_t c = 0; c < count; ++c) scores[c] += bias[c];
    softmax_in_place(scores, count);
    weigh_values(scores, values, head_dim, count, out);
}

// Where one cached attention step finds its tensors (all float32, contiguous): `new_tokens` new tokens per sequence
// (1 for a decode step, the prompt for a prefill), feature-major as the projections give them; the cache is
// token-major (each head's keys one contiguous block, as attention reads them). Rotary tables and the bias have one
// block per head: block (b * heads + h) for queries, (b * kv_heads + g) for keys, `*_row_stride` floats apart (0:
// one block shared by every head and sequence).
struct CachedAttentionArgs {
    const float* query;        // [batch, heads, head_dim, new_tokens], not yet rotated
    const float* new_keys;     // [batch, kv_heads, head_dim, new_tokens], not yet rotated
    const float* new_values;   // [batch, kv_heads, head_dim, new_tokens]
    const float* query_cos;    // blocks of [head_dim, new_tokens]
    const float* query_sin;
    const float* key_cos;
    const float* key_sin;
    int64_t table_row_stride;
    float* keys;               // cache [>= batch, kv_heads, capacity, head_dim]; rows from `position` are written
    float* values;
    int64_t capacity;
    int64_t position;          // filled rows (tokens) before this step
    const int64_t* positions;  // [batch]: each sequence's own `position` (continuous batching, one new token), or null
    int64_t new_tokens;
    const float* bias;         // additive, blocks of [new_tokens, bias_columns] (bias_columns >= position +
    int64_t bias_row_stride;   // new_tokens), or null: causal
    int64_t bias_columns;
    int64_t batch, heads, kv_heads, head_dim;
    float* out;                // [batch, heads, head_dim, new_tokens]
};

// rotated = (x * cos + rotate_half(x) * sin) * scale, rotate_half([a, b]) = [-b, a] over the halves of head_dim; x
// and the tables step `stride` floats from one feature to the next (one token's column of a feature-major block).
void rotate(const float* x, const float* cos, const float* sin, int64_t stride, int64_t head_dim, float scale,
            float* rotated, int64_t rotated_stride) {
    const int64_t half = head_dim / 2;
    for (int64_t i = 0; i < head_dim; ++i) {
        const float partner = i < half ? -x[(i + half) * stride] : x[(i - half) * stride];
        rotated[i * rotated_stride] = (x[i * stride] * cos[i * stride] + partner * sin[i * stride]) * scale;
    }
}

// out[rows, out_features] = x[rows, in_features] @ W + bias (bias may be null). x, bias and out are contiguous
// float32; W is float32 (skinny_matmul) or bfloat16 (skinny_matmul_bf16).
// weight_is_out_by_in = 0: W is [in_features, out_features]; 1: W is [out_features, in_features].
template <typename W>
void product(const float* x, int64_t rows, int64_t in_features, const W* weight, int64_t out_features,
             int weight_is_out_by_in, const float* bias, float* out, int num_threads) {
    if (weight_is_out_by_in)
        rows_out_by_in(x, rows, in_features, weight, out_features, bias, out, num_threads);
    else if (rows == 1)
        one_row_in_by_out(x, in_features, weight, out_features, bias, out, num_threads);
    else
        rows_in_by_out(x, rows, in_features, weight, out_features, bias, out, num_threads);
}

// gate[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)), exp taken of -|g| only (exp_nonpositive).
void silu_times(float* gate, const float* up, int64_t count, int num_threads) {
#pragma omp parallel num_threads(num_threads)
    {
        const Range items = share(count, kFloatsPerVector);
        const __m256 one = _mm256_set1_ps(1.0f), sign_bit = _mm256_set1_ps(-0.0f);
        int64_t i = items.begin;
        for (; i + kFloatsPerVector <= items.end; i += kFloatsPerVector) {
            const __m256 g = _mm256_loadu_ps(gate + i);
            const __m256 e = exp_nonpositive(_mm256_or_ps(g, sign_bit));  // exp(-|g|)
            const __m256 numerator = _mm256_blendv_ps(g, _mm256_mul_ps(g, e), g);  // g < 0: g * exp(g)
            const __m256 silu = _mm256_div_ps(numerator, _mm256_add_ps(one, e));
            _mm256_storeu_ps(gate + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
        }
        for (; i < items.end; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
    }
}

// total[0:count] += addend[0:count] (a residual).
void add_in_place(float* total, const float* addend, int64_t count) {
    for (int64_t i = 0; i < count; ++i) total[i] += addend[i];
}

// ---- Attention on register tiles ----
// Scores and the value product for several queries of one head at once, on 6 x 16 register tiles (12 accumulators,
// one tile's loads shared by six queries), 6 x 32 with AVX-512 where the CPU has it (`wide_tiles`; the arithmetic,
// not the reads, bounds attention): the vision encoder's attention and a prompt's. A task takes kTaskQueries
// queries, their score rows kept in cache; keys are packed in tiles of `key_tile_width()`.

constexpr int64_t kTaskQueries = 24;     // queries per task: the head's keys and values are read once for all of them
constexpr int64_t kTileRows = 6;         // queries per register tile
constexpr int64_t kValuePassKeys = 256;  // keys per pass of the value product (their values stay in cache)

// The unroll pragmas in score_tile and value_tile keep their twelve accumulators in registers: without them GCC 12
// also stored all twelve to the stack on every step, and the one store a cycle bound the tile (a global vision
// attention block took 1.5x as long on a 2-core AVX2 EPYC).

// scores[r * stride + j] = queries[:, r] . key_tile[:, j] for ROWS queries ([head_dim][kTaskQueries] columns) and
// one packed tile of 16 keys ([head_dim][16]).
template <int ROWS>
void score_tile(const float* queries, int64_t head_dim, const float* key_tile, float* scores, int64_t stride) {
    __m256 sum[ROWS][kPanelVectors];
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) sum[r][0] = sum[r][1] = _mm256_setzero_ps();
    for (int64_t d = 0; d < head_dim; ++d) {
        const __m256 low = _mm256_loadu_ps(key_tile + d * kPanelWidth);
        const __m256 high = _mm256_loadu_ps(key_tile + d * kPanelWidth + kFloatsPerVector);
#pragma GCC unroll 8
        for (int r = 0; r < ROWS; ++r) {
            const __m256 q = _mm256_broadcast_ss(queries + d * kTaskQueries + r);
            sum[r][0] = _mm256_fmadd_ps(q, low, sum[r][0]);
            sum[r][1] = _mm256_fmadd_ps(q, high, sum[r][1]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
        _mm256_storeu_ps(scores + r * stride, sum[r][0]);
        _mm256_storeu_ps(scores + r * stride + kFloatsPerVector, sum[r][1]);
    }
}

// partial[r * head_dim + d0 + j] += sum over keys [begin, end) of probabilities[r * stride + k] * values[k, d0 + j],
// for ROWS queries and 16 features from d0 (values token-major [tokens, head_dim]).
template <int ROWS>
void value_tile(const float* probabilities, int64_t stride, const float* values, int64_t head_dim, int64_t d0,
                int64_t begin, int64_t end, float* partial) {
    __m256 sum[ROWS][kPanelVectors];
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) sum[r][0] = sum[r][1] = _mm256_setzero_ps();
    for (int64_t k = begin; k < end; ++k) {
        const __m256 low = _mm256_loadu_ps(values + k * head_dim + d0);
        const __m256 high = _mm256_loadu_ps(values + k * head_dim + d0 + kFloatsPerVector);
#pragma GCC unroll 8
        for (int r = 0; r < ROWS; ++r) {
            const __m256 p = _mm256_broadcast_ss(probabilities + r * stride + k);
            sum[r][0] = _mm256_fmadd_ps(p, low, sum[r][0]);
            sum[r][1] = _mm256_fmadd_ps(p, high, sum[r][1]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
        float* out = partial + r * head_dim + d0;
        _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), sum[r][0]));
        _mm256_storeu_ps(out + kFloatsPerVector, _mm256_add_ps(_mm256_loadu_ps(out + kFloatsPerVector), sum[r][1]));
    }
}

constexpr int64_t kWideTileWidth = 32;  // keys or features of an AVX-512 tile: two 16-float registers
constexpr int64_t kWideTileRows = 12;   // queries per AVX-512 tile (24 of its 32 registers accumulate)

// score_tile on AVX-512 registers, 32 keys a tile ([head_dim][32]).
template <int ROWS>
__attribute__((target("avx512f"))) void score_tile_wide(const float* queries, int64_t head_dim,
                                                         const float* key_tile, float* scores, int64_t stride) {
    __m512 sum[ROWS][2];
    for (int r = 0; r < ROWS; ++r) sum[r][0] = sum[r][1] = _mm512_setzero_ps();
    for (int64_t d = 0; d < head_dim; ++d) {
        const __m512 low = _mm512_loadu_ps(key_tile + d * kWideTileWidth);
        const __m512 high = _mm512_loadu_ps(key_tile + d * kWideTileWidth + 16);
        for (int r = 0; r < ROWS; ++r) {
            const __m512 q = _mm512_set1_ps(queries[d * kTaskQueries + r]);
            sum[r][0] = _mm512_fmadd_ps(q, low, sum[r][0]);
            sum[r][1] = _mm512_fmadd_ps(q, high, sum[r][1]);
        }
    }
    for (int r = 0; r < ROWS; ++r) {
        _mm512_storeu_ps(scores + r * stride, sum[r][0]);
        _mm512_storeu_ps(scores + r * stride + 16, sum[r][1]);
    }
}

// value_tile on AVX-512 registers, 32 features from d0.
template <int ROWS>
__attribute__((target("avx512f"))) void value_tile_wide(const float* probabilities, int64_t stride,
                                                         const float* values, int64_t head_dim, int64_t d0,
                                                         int64_t begin, int64_t end, float* partial) {
    __m512 sum[ROWS][2];
    for (int r = 0; r < ROWS; ++r) sum[r][0] = sum[r][1] = _mm512_setzero_ps();
    for (int64_t k = begin; k < end; ++k) {
        const __m512 low = _mm512_loadu_ps(values + k * head_dim + d0);
        const __m512 high = _mm512_loadu_ps(values + k * head_dim + d0 + 16);
        for (int r = 0; r < ROWS; ++r) {
            const __m512 p = _mm512_set1_ps(probabilities[r * stride + k]);
            sum[r][0] = _mm512_fmadd_ps(p, low, sum[r][0]);
            sum[r][1] = _mm512_fmadd_ps(p, high, sum[r][1]);
        }
    }
    for (int r = 0; r < ROWS; ++r) {
        float* out = partial + r * head_dim + d0;
        _mm512_storeu_ps(out, _mm512_add_ps(_mm512_loadu_ps(out), sum[r][0]));
        _mm512_storeu_ps(out + 16, _mm512_add_ps(_mm512_loadu_ps(out + 16), sum[r][1]));
    }
}

// Keys per packed tile: 32 on AVX-512, else 16.
int64_t key_tile_width() { return wide_tiles() ? kWideTileWidth : kPanelWidth; }

// scores[r * stride + k] = queries[:, r] . key k for the first `count` queries of a task ([head_dim][kTaskQueries])
// and keys k < `keys`: whole tiles from `packed` ([keys / width][head_dim][width], width = key_tile_width()), the
// rest from `unpacked`, where feature d of key k is at k * token_step + d * feature_step.
void score_task_keys(const float* queries, int64_t head_dim, int64_t count, const float* packed, const float* unpacked,
                     int64_t token_step, int64_t feature_step, int64_t keys, float* scores, int64_t stride) {
    const int64_t width = key_tile_width(), tiled = keys / width * width;
    for (int64_t k = 0; k < tiled; k += width)
        if (wide_tiles())
            for (int64_t r = 0; r < kTaskQueries; r += kWideTileRows)
                score_tile_wide<kWideTileRows>(queries + r, head_dim, packed + k * head_dim, scores + r * stride + k,
                                               stride);
        else
            for (int64_t r = 0; r < kTaskQueries; r += kTileRows)
                score_tile<kTileRows>(queries + r, head_dim, packed + k * head_dim, scores + r * stride + k, stride);
    for (int64_t k = tiled; k < keys; ++k) {  // all of a task's queries at once: a vector over them per feature
        float totals[kTaskQueries] = {};
        for (int64_t d = 0; d < head_dim; ++d) {
            const float feature = unpacked[k * token_step + d * feature_step];
            for (int64_t r = 0; r < kTaskQueries; ++r) totals[r] += queries[d * kTaskQueries + r] * feature;
        }
        for (int64_t r = 0; r < count; ++r) scores[r * stride + k] = totals[r];
    }
}

// partial[r * head_dim + d] = sum over k < keys of probabilities[r * stride + k] * values[k, d] for `count` queries
// of a task (values token-major [keys, head_dim]).
void weigh_task_values(const float* probabilities, int64_t stride, const float* values, int64_t head_dim,
                       int64_t count, int64_t keys, float* partial) {
    std::fill(partial, partial + kTaskQueries * head_dim, 0.0f);
    const int64_t wide_dim = wide_tiles() ? head_dim / kWideTileWidth * kWideTileWidth : 0;
    const int64_t tiled_dim = head_dim / kPanelWidth * kPanelWidth;
    for (int64_t begin = 0; begin < keys; begin += kValuePassKeys) {
        const int64_t end = std::min(keys, begin + kValuePassKeys);
        for (int64_t r = 0; r < count && wide_dim > 0; r += kWideTileRows)
            for (int64_t d0 = 0; d0 < wide_dim; d0 += kWideTileWidth)
                value_tile_wide<kWideTileRows>(probabilities + r * stride, stride, values, head_dim, d0, begin, end,
                                               partial + r * head_dim);
        for (int64_t r = 0; r < count; r += kTileRows)
            for (int64_t d0 = wide_dim; d0 < tiled_dim; d0 += kPanelWidth)
                value_tile<kTileRows>(probabilities + r * stride, stride, values, head_dim, d0, begin, end,
                                      partial + r * head_dim);
    }
    for (int64_t r = 0; r < count; ++r)
        for (int64_t d = tiled_dim; d < head_dim; ++d) {
            float total = 0.0f;
            for (int64_t k = 0; k < keys; ++k) total += probabilities[r * stride + k] * values[k * head_dim + d];
            partial[r * head_dim + d] = total;
        }
}

// ---- A prompt's attention ----
// Several new tokens of sequences that share one `position` (a prefill or a continued prompt): each head's filled keys
// packed into 16-key tiles once, then tasks of kTaskQueries queries of one head on the register tiles. A task scores
// the keys its last query may see; each query's softmax then runs over its own keys (causally, or all with the bias),
// the rest of its row set to zero, and the value product reads the token-major cache.

// keys token-major [count, head_dim] -> packed [count / width][head_dim][width] (whole tiles of key_tile_width()).
void pack_cached_key_tiles(const float* keys, int64_t head_dim, int64_t count, float* packed) {
    const int64_t width = key_tile_width();
    for (int64_t tile = 0; tile < count / width; ++tile)
        for (int64_t j = 0; j < width; ++j)
            for (int64_t d = 0; d < head_dim; ++d)
                packed[(tile * head_dim + d) * width + j] = keys[(tile * width + j) * head_dim + d];
}

// Per-thread room for one task: the rotated queries [head_dim][kTaskQueries] (scaled), score rows
// [kTaskQueries][score_stride] and output sums [kTaskQueries][head_dim].
struct PromptTaskBuffers {
    std::vector<float> queries, scores, partial;
    int64_t score_stride;
};

// Queries [first, first + kTaskQueries) of query row `row` (sequence * heads + head; fewer at the end), each
// attending over the keys it may see: out[row, :, t] for each. `packed_keys` holds `packed_stride` floats per KV row.
void attend_prompt_queries(const CachedAttentionArgs& a, const float* packed_keys, int64_t packed_stride, int64_t row,
                           int64_t first, PromptTaskBuffers& buffers) {
    const int64_t dim = a.head_dim, tokens = a.new_tokens, stride = buffers.score_stride;
    const int64_t count = std::min(kTaskQueries, tokens - first);
    const int64_t kv = row / a.heads * a.kv_heads + row % a.heads / (a.heads / a.kv_heads);
    const int64_t seen = a.bias ? a.position + tokens : a.position + first + count;  // by the task's last query
    const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
    const float* keys = a.keys + kv * a.capacity * dim;
    const float* values = a.values + kv * a.capacity * dim;
    float* queries = buffers.queries.data();
    float* scores = buffers.scores.data();
    float* partial = buffers.partial.data();
    for (int64_t r = 0; r < kTaskQueries; ++r) {
        const int64_t table = row * a.table_row_stride + first + r;
        if (r < count)
            rotate(a.query + row * dim * tokens + first + r, a.query_cos + table, a.query_sin + table, tokens, dim,
                   scale, queries + r, kTaskQueries);
        else
            for (int64_t d = 0; d < dim; ++d) queries[d * kTaskQueries + r] = 0.0f;
    }
    score_task_keys(queries, dim, count, packed_keys + kv * packed_stride, keys, dim, 1, seen, scores, stride);
    float inverse[kTaskQueries] = {};
    for (int64_t r = 0; r < count; ++r) {
        float* line = scores + r * stride;
        const int64_t own = a.bias ? seen : a.position + first + r + 1;
        if (a.bias) {
            const float* bias = a.bias + row * a.bias_row_stride + (first + r) * a.bias_columns;
            for (int64_t k = 0; k < own; ++k) line[k] += bias[k];
        }
        inverse[r] = 1.0f / exponentiate_in_place(line, own, largest_of(line, own));
        std::fill(line + own, line + seen, 0.0f);
    }
    weigh_task_values(scores, stride, values, dim, count, seen, partial);
    for (int64_t d = 0; d < dim; ++d)
        for (int64_t r = 0; r < count; ++r)
            a.out[(row * dim + d) * tokens + first + r] = partial[r * dim + d] * inverse[r];
}

// Each query of `a` attending over the keys it may see, one query per task (in a parallel region: the tasks are
// shared among its threads).
void attend_query_by_query(const CachedAttentionArgs& a) {
    const int64_t group = a.heads / a.kv_heads, tokens = a.new_tokens, head_dim = a.head_dim;
    const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    thread_local std::vector<float> scores, query, attended;
    scores.resize(a.capacity);
    query.resize(head_dim);
    attended.resize(head_dim);
#pragma omp for schedule(static)
    for (int64_t row_token = 0; row_token < a.batch * a.heads * tokens; ++row_token) {
        const int64_t row = row_token / tokens, t = row_token % tokens;
        const int64_t position = a.positions ? a.positions[row / a.heads] : a.position;
        const int64_t table = row * a.table_row_stride + t, count = a.bias ? position + tokens : position + t + 1;
        const int64_t kv = row / a.heads * a.kv_heads + row % a.heads / group;
        rotate(a.query + row * head_dim * tokens + t, a.query_cos + table, a.query_sin + table, tokens, head_dim,
               scale, query.data(), 1);
        attend_one_head(query.data(), head_dim, a.keys + kv * a.capacity * head_dim,
                        a.values + kv * a.capacity * head_dim, count,
                        a.bias ? a.bias + row * a.bias_row_stride + t * a.bias_columns : nullptr, scores.data(),
                        attended.data());
        for (int64_t d = 0; d < head_dim; ++d) a.out[(row * head_dim + d) * tokens + t] = attended[d];
    }
}

// The queries of a prompt (several new tokens, one shared position) on register tiles: every head's filled keys
// packed into `packed_keys` (`packed_stride` floats per KV head), then tasks of kTaskQueries queries (in a parallel
// region, like attend_query_by_query).
void attend_prompt(const CachedAttentionArgs& a, float* packed_keys, int64_t packed_stride) {
    const int64_t head_dim = a.head_dim, tokens = a.new_tokens, seen = a.position + tokens;
    const int64_t tasks_per_row = (tokens + kTaskQueries - 1) / kTaskQueries;
#pragma omp for schedule(static)
    for (int64_t kv = 0; kv < a.batch * a.kv_heads; ++kv)
        pack_cached_key_tiles(a.keys + kv * a.capacity * head_dim, head_dim, seen, packed_keys + kv * packed_stride);
    PromptTaskBuffers buffers;
    buffers.score_stride = seen + kPanelWidth;  // a padded stride: score rows 2^k floats apart share cache sets
    buffers.queries.resize(head_dim * kTaskQueries);
    buffers.scores.resize(kTaskQueries * buffers.score_stride);
    buffers.partial.resize(kTaskQueries * head_dim);
#pragma omp for schedule(static, 1)  // interleaved: later queries see more keys
    for (int64_t task = 0; task < a.batch * a.heads * tasks_per_row; ++task)
        attend_prompt_queries(a, packed_keys, packed_stride, task / tasks_per_row, task % tasks_per_row * kTaskQueries,
                              buffers);
}

// One attention step: every new key (rotated) and value written into the cache at its sequence's next rows, then
// each rotated query attends over the tokens it may see: causally, or with a bias over every filled row (the bias
// masks what it hides, as in the Paddle path, so even a fully masked padding row gives the same result). Query head
// h reads KV head h / (heads / kv_heads). A prompt's queries run on register tiles, a decode step's one by one.
void run_cached_attention(const CachedAttentionArgs& a, int num_threads) {
    const int64_t tokens = a.new_tokens, head_dim = a.head_dim;
    const bool prompt = tokens > 1 && !a.positions;
    const int64_t width = key_tile_width();
    const int64_t packed_stride = prompt ? (a.position + tokens) / width * width * head_dim : 0;
    std::vector<float> packed_keys(a.batch * a.kv_heads * packed_stride);
#pragma omp parallel num_threads(num_threads)
    {
#pragma omp for schedule(static)
        for (int64_t row_token = 0; row_token < a.batch * a.kv_heads * tokens; ++row_token) {
            const int64_t row = row_token / tokens, t = row_token % tokens;
            const int64_t position = a.positions ? a.positions[row / a.kv_heads] : a.position;
            const int64_t table = row * a.table_row_stride + t, source = row * head_dim * tokens + t;
            const int64_t target = (row * a.capacity + position + t) * head_dim;
            rotate(a.new_keys + source, a.key_cos + table, a.key_sin + table, tokens, head_dim, 1.0f, a.keys + target,
                   1);
            for (int64_t d = 0; d < head_dim; ++d) a.values[target + d] = a.new_values[source + d * tokens];
        }
        if (prompt)
            attend_prompt(a, packed_keys.data(), packed_stride);
        else
            attend_query_by_query(a);
    }
}

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight, for `rows` rows of `features` floats.
void rms_norm_rows(const float* x, int64_t rows, int64_t features, const float* weight, float eps, float* out) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* row = x + r * features;
        double squares = 0.0;
        for (int64_t i = 0; i < features; ++i) squares += static_cast<double>(row[i]) * row[i];
        const float inverse = 1.0f / std::sqrt(static_cast<float>(squares / features) + eps);
        for (int64_t i = 0; i < features; ++i) out[r * features + i] = weight[i] * (row[i] * inverse);
    }
}

// body(begin, end) over [0, count) in chunks of 64 Ki items, shared among `num_threads` threads.
template <typename Body>
void in_chunks(int64_t count, int num_threads, const Body& body) {
    constexpr int64_t kChunk = 1 << 16;
    const int64_t chunks = (count + kChunk - 1) / kChunk;
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) body(chunk * kChunk, std::min(count, (chunk + 1) * kChunk));
}

// out[0:count] = the bfloat16 values in[0:count] as float32 (exact: the 16 bits become the float's top half).
void widen_bfloat16(const bfloat16* in, int64_t count, float* out, int num_threads) {
    in_chunks(count, num_threads, [&](int64_t begin, int64_t end) {
        int64_t i = begin;
        for (; i + kFloatsPerVector <= end; i += kFloatsPerVector) _mm256_storeu_ps(out + i, load8(in + i));
        for (; i < end; ++i) out[i] = to_float(in[i]);
    });
}

// The float32 value nearest to `value` that bfloat16 holds (ties to even), as its upper 16 bits; a NaN stays a quiet
// NaN (rounding its bits could carry it into infinity).
inline bfloat16 to_bfloat16(float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    const bool is_nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
    return static_cast<bfloat16>(is_nan ? (bits >> 16) | 0x40u : rounded);
}

// x[0:count] narrowed by to_bfloat16, 16 values at a time (AVX-512).
__attribute__((target("avx512f"))) void narrow_row(const float* x, int64_t count, bfloat16* out) {
    const __m512i one = _mm512_set1_epi32(1), below_half = _mm512_set1_epi32(0x7FFF);
    const __m512i quiet = _mm512_set1_epi32(0x40), magnitude = _mm512_set1_epi32(0x7FFFFFFF);
    const __m512i infinity = _mm512_set1_epi32(0x7F800000);
    int64_t i = 0;
    for (; i + 16 <= count; i += 16) {
        const __m512i bits = _mm512_loadu_si512(x + i), upper = _mm512_srli_epi32(bits, 16);
        const __m512i increment = _mm512_add_epi32(below_half, _mm512_and_si512(upper, one));
        const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, increment), 16);
        const __mmask16 is_nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(bits, magnitude), infinity);
        const __m512i narrowed = _mm512_mask_blend_epi32(is_nan, rounded, _mm512_or_si512(upper, quiet));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm512_cvtepi32_epi16(narrowed));
    }
    for (; i < count; ++i) out[i] = to_bfloat16(x[i]);
}

// out[i] = to_bfloat16(in[i]) for i in [0, count), on AVX-512 with the wide tiles.
void narrow_bfloat16(const float* in, int64_t count, bfloat16* out, int num_threads) {
    in_chunks(count, num_threads, [&](int64_t begin, int64_t end) {
        if (wide_tiles())
            narrow_row(in + begin, end - begin, out + begin);
        else
            for (int64_t i = begin; i < end; ++i) out[i] = to_bfloat16(in[i]);
    });
}

// ---- A prompt's products on AMX ----
// out = bfloat16(x) @ W + bias for a prompt's rows, W a bfloat16 Paddle Linear weight [depth, columns], summed in
// float32 by AMX's tile products (TDPBF16PS). x is narrowed once into zero-padded bfloat16 rows (an A tile: 16 rows x
// 32 values). The threads share W's 32-column blocks, four at a time: their weights, 1024 rows at a time, are packed
// into the pair-interleaved layout of B tiles (16 pairs of weight rows x 16 columns), and each 32 x 32 block of out
// sums on four accumulator tiles. Rows are taken 512 at a time, so that their bfloat16 chunk stays in L2. Measured on
// two Xeon cores with GOT's decoder (a 306-token prompt, weights from memory): the 24 layers' products in ~0.21 s,
// against ~0.24 s on oneDNN's bfloat16 GEMM.

constexpr int64_t kAmxTileRows = 16;   // rows of an A tile, pairs of weight rows in a B tile, rows of a sum tile
constexpr int64_t kAmxTileDepth = 32;  // bfloat16 values in one 64-byte tile row
constexpr int64_t kAmxTileValues = kAmxTileRows * kAmxTileDepth;
constexpr int64_t kProductBlock = 32;  // out rows and columns per block: 2 x 2 sum tiles
constexpr int64_t kProductChunkDepth = 1024;
constexpr int64_t kProductChunkRows = 512;
constexpr int64_t kPanelValues = kProductChunkDepth * kProductBlock;  // one block's packed weights (64 KB)
constexpr int64_t kPanelsPerPack = 4;  // blocks packed together (see pack_weight_panels)

// The byte layout of LDTILECFG's operand (palette 1).
struct TileConfig {
    uint8_t palette, start_row, reserved[14];
    uint16_t bytes_per_row[16];
    uint8_t rows[16];
};

struct AmxLinearArgs {
    const float* x;  // [batch, tokens, depth], or feature-major [batch, depth, tokens] (x_feature_major)
    int64_t batch, tokens, depth;
    int64_t x_feature_major;
    const bfloat16* weight;  // [depth, columns]
    int64_t columns;
    const float* bias;  // [columns] or null
    float* out;         // [batch, tokens, columns], or feature-major [batch, columns, tokens] (out_feature_major)
    int64_t out_feature_major;
};

inline int64_t round_up(int64_t count, int64_t multiple) { return (count + multiple - 1) / multiple * multiple; }

// `count` values on 64-byte lines (a tile row split over two lines loads at half speed); null for none.
template <typename T>
std::unique_ptr<T[], decltype(&std::free)> cache_aligned(int64_t count) {
    void* memory = count ? std::aligned_alloc(64, round_up(count * sizeof(T), 64)) : nullptr;
    return {static_cast<T*>(memory), &std::free};
}

#ifdef PADDLE_GOT_AMX
// Whether this CPU has AMX's bfloat16 tiles and Linux lets this process use them (arch_prctl ARCH_REQ_XCOMP_PERM
// for XTILEDATA, asked once; Linux 5.16 and later).
bool amx_usable() {
    static const bool usable = __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
                               __builtin_cpu_supports("avx512bw") &&
                               syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
    return usable;
}

// Every tile 16 rows of 64 bytes: sums 0-3, A tiles 4-5, B tiles 6-7.
__attribute__((target("amx-tile"))) void configure_tiles() {
    TileConfig config = {};
    config.palette = 1;
    for (int tile = 0; tile < 8; ++tile) {
        config.rows[tile] = kAmxTileRows;
        config.bytes_per_row[tile] = kAmxTileDepth * sizeof(bfloat16);
    }
    _tile_loadconfig(&config);
}

// Row r of the product's bfloat16 rows [padded_rows, padded_depth]: x's row narrowed, zeros past depth and rows.
__attribute__((target("avx512f"))) void narrow_product_row(const AmxLinearArgs& a, int64_t r, int64_t padded_depth,
                                                            bfloat16* row) {
    const int64_t rows = a.batch * a.tokens;
    int64_t filled = 0;
    if (r < rows && !a.x_feature_major) {
        narrow_row(a.x + r * a.depth, a.depth, row);
        filled = a.depth;
    } else if (r < rows) {
        const float* column = a.x + (r / a.tokens) * a.depth * a.tokens + r % a.tokens;
        for (; filled < a.depth; ++filled) row[filled] = to_bfloat16(column[filled * a.tokens]);
    }
    std::memset(row + filled, 0, (padded_depth - filled) * sizeof(bfloat16));
}

// Columns [n0, n0 + 32) of weight row k, zeros outside the weight (rows past depth, columns outside `in_width`).
__attribute__((target("avx512f,avx512bw"))) inline __m512i weight_row(const AmxLinearArgs& a, int64_t k, int64_t n0,
                                                                      __mmask32 in_width) {
    return k < a.depth ? _mm512_maskz_loadu_epi16(in_width, a.weight + k * a.columns + n0) : _mm512_setzero_si512();
}

// Weight rows [k0, k0 + depth) and the 32-column blocks [n0, n0 + 32 * blocks) -> a panel per block,
// [depth / 32][2 tiles][16 pairs][16 columns][2] (kPanelValues apart): B tile t of step s holds, for each pair p of
// rows k0 + 32 s + 2 p (+1), columns 16 t ... 16 t + 15 of the block, the even row's value next to the odd row's. Rows
// past the weight's and columns past its width are zeros. Each weight row is read across all the blocks at once:
// packed one block at a time, a 64-byte line per row (GOT's MLP rows are 9.5 KB apart), GOT's weights read at ~6 GB/s
// from memory, four blocks at a time at ~10.
__attribute__((target("avx512f,avx512bw"))) void pack_weight_panels(const AmxLinearArgs& a, int64_t k0, int64_t depth,
                                                                    int64_t n0, int64_t blocks, bfloat16* panels) {
    const __m512i first_tile = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    const __m512i second_tile = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    for (int64_t pair = 0; pair < depth / 2; ++pair) {
        const int64_t even_row = k0 + 2 * pair;
        const int64_t offset = pair / kAmxTileRows * 2 * kAmxTileValues + pair % kAmxTileRows * kAmxTileDepth;
        for (int64_t b = 0; b < blocks; ++b) {
            const int64_t start = n0 + b * kProductBlock;
            const int64_t width = std::max<int64_t>(0, std::min<int64_t>(kProductBlock, a.columns - start));
            const __mmask32 in_width = width == kProductBlock ? ~__mmask32(0) : (__mmask32(1) << width) - 1;
            const __m512i even = weight_row(a, even_row, start, in_width);
            const __m512i odd = weight_row(a, even_row + 1, start, in_width);
            // Within each 128-bit lane: columns 0-3 (low) and 4-7 (high) of that lane's eight, interleaved; the
            // permutes gather lanes 0-1 (columns 0-15) and 2-3 (columns 16-31).
            const __m512i low = _mm512_unpacklo_epi16(even, odd), high = _mm512_unpackhi_epi16(even, odd);
            bfloat16* step = panels + b * kPanelValues + offset;
            _mm512_storeu_si512(step, _mm512_permutex2var_epi64(low, first_tile, high));
            _mm512_storeu_si512(step + kAmxTileValues, _mm512_permutex2var_epi64(low, second_tile, high));
        }
    }
}

// The sums of a 32 x 32 block (tiles 0-3) written into a's out, rows and columns within the product, plus the bias.
void write_product_block(const AmxLinearArgs& a, const float* block, int64_t m0, int64_t n0) {
    const int64_t rows = std::min(kProductBlock, a.batch * a.tokens - m0);
    const int64_t width = std::min(kProductBlock, a.columns - n0);
    for (int64_t i = 0; i < rows; ++i) {
        const int64_t r = m0 + i;
        const float* sums = block + i * kProductBlock;
        if (a.out_feature_major) {
            float* target = a.out + (r / a.tokens) * a.columns * a.tokens + n0 * a.tokens + r % a.tokens;
            for (int64_t j = 0; j < width; ++j) target[j * a.tokens] = sums[j] + (a.bias ? a.bias[n0 + j] : 0.0f);
        } else {
            float* target = a.out + r * a.columns + n0;
            for (int64_t j = 0; j < width; ++j) target[j] = sums[j] + (a.bias ? a.bias[n0 + j] : 0.0f);
        }
    }
}

// One 32 x 32 block of out, rows [m0, m0 + 32) and columns [n0, n0 + 32), over the depth chunk [k0, k0 + depth):
// `narrowed` a's bfloat16 rows (`padded_depth` values each), `panel` the block's packed weights for the chunk. The
// sums start from zero (the first chunk) or from `partial` ([padded_rows, padded_columns]); after the last chunk they
// are written into out, before it back into `partial`.
__attribute__((target("amx-tile,amx-bf16"))) void multiply_block(const AmxLinearArgs& a, const bfloat16* narrowed,
                                                                 int64_t padded_depth, const bfloat16* panel,
                                                                 float* partial, int64_t padded_columns, int64_t m0,
                                                                 int64_t n0, int64_t k0, int64_t depth) {
    const bool first = k0 == 0, last = k0 + depth == padded_depth;
    float* sums = partial ? partial + m0 * padded_columns + n0 : nullptr;
    const int64_t sum_stride = padded_columns * sizeof(float);
    if (first) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    } else {
        _tile_loadd(0, sums, sum_stride);
        _tile_loadd(1, sums + kAmxTileRows, sum_stride);
        _tile_loadd(2, sums + kAmxTileRows * padded_columns, sum_stride);
        _tile_loadd(3, sums + kAmxTileRows * padded_columns + kAmxTileRows, sum_stride);
    }
    const bfloat16* upper = narrowed + m0 * padded_depth + k0;  // A rows m0 ... m0 + 15; lower: the next 16
    const bfloat16* lower = upper + kAmxTileRows * padded_depth;
    const int64_t row_stride = padded_depth * sizeof(bfloat16), panel_stride = kAmxTileDepth * sizeof(bfloat16);
    for (int64_t step = 0; step < depth / kAmxTileDepth; ++step) {
        const bfloat16* weights = panel + step * 2 * kAmxTileValues;
        _tile_loadd(4, upper + step * kAmxTileDepth, row_stride);
        _tile_loadd(5, lower + step * kAmxTileDepth, row_stride);
        _tile_loadd(6, weights, panel_stride);
        _tile_loadd(7, weights + kAmxTileValues, panel_stride);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    alignas(64) float block[kProductBlock * kProductBlock];
    float* target = last ? block : sums;
    const int64_t stride = last ? kProductBlock * sizeof(float) : sum_stride;
    const int64_t lower_half = kAmxTileRows * stride / sizeof(float);
    _tile_stored(0, target, stride);
    _tile_stored(1, target + kAmxTileRows, stride);
    _tile_stored(2, target + lower_half, stride);
    _tile_stored(3, target + lower_half + kAmxTileRows, stride);
    if (last) write_product_block(a, block, m0, n0);
}

__attribute__((target("amx-tile,avx512f,avx512bw"))) void run_amx_linear(const AmxLinearArgs& a, int num_threads) {
    const int64_t rows = a.batch * a.tokens;
    const int64_t padded_rows = round_up(rows, kProductBlock), padded_depth = round_up(a.depth, kAmxTileDepth);
    const int64_t padded_columns = round_up(a.columns, kProductBlock), blocks = padded_columns / kProductBlock;
    const int64_t per_pack = std::max<int64_t>(1, std::min(kPanelsPerPack, (blocks + num_threads - 1) / num_threads));
    const int64_t packs = (blocks + per_pack - 1) / per_pack;
    const auto narrowed = cache_aligned<bfloat16>(padded_rows * padded_depth);
    // Sums carried between depth chunks: only when there is more than one.
    const auto partial = cache_aligned<float>(padded_depth > kProductChunkDepth ? padded_rows * padded_columns : 0);
#pragma omp parallel num_threads(num_threads)
    {
#pragma omp for schedule(static)
        for (int64_t r = 0; r < padded_rows; ++r)
            narrow_product_row(a, r, padded_depth, narrowed.get() + r * padded_depth);
        configure_tiles();
        const auto panels = cache_aligned<bfloat16>(kPanelsPerPack * kPanelValues);
        for (int64_t m0 = 0; m0 < padded_rows; m0 += kProductChunkRows)
            for (int64_t k0 = 0; k0 < padded_depth; k0 += kProductChunkDepth) {
                const int64_t depth = std::min(padded_depth - k0, kProductChunkDepth);
#pragma omp for schedule(static)
                for (int64_t pack = 0; pack < packs; ++pack) {
                    const int64_t first_block = pack * per_pack, count = std::min(per_pack, blocks - first_block);
                    pack_weight_panels(a, k0, depth, first_block * kProductBlock, count, panels.get());
                    for (int64_t b = 0; b < count; ++b)
                        for (int64_t mb = m0; mb < std::min(padded_rows, m0 + kProductChunkRows); mb += kProductBlock)
                            multiply_block(a, narrowed.get(), padded_depth, panels.get() + b * kPanelValues,
                                           partial.get(), padded_columns, mb, (first_block + b) * kProductBlock, k0,
                                           depth);
                }
            }
        _tile_release();
    }
}
#else
bool amx_usable() { return false; }
void run_amx_linear(const AmxLinearArgs&, int) {}
#endif

// ---- The vision encoder's attention ----
// Softmax attention with MViTv2's decomposed relative positions over a [height, width] map, one head at a time:
// scores[q, k] = scale * q . k + rel_h[q, ky] + rel_w[q, kx], with rel_h[q, ky] = q . R_h[qy, ky] (and rel_w alike)
// taken here from the gathered tables, a few vectors of keys at a time. Keys are packed into 16-column tiles and
// values transposed token-major once per call, so that both products run on the register tiles above.

struct VisionAttentionArgs {
    const float* qkv;    // [batch, 3, heads, head_dim, tokens]: the qkv projection, feature-major
    const float* rel_h;  // [height, head_dim, round_up(height, kFloatsPerVector)]: R_h[qy, ky, c] at [qy][c][ky]
    const float* rel_w;  // [width, head_dim, round_up(width, kFloatsPerVector)]: the same for the columns
    int64_t batch, heads, head_dim, height, width;
    float* out;          // [batch, heads, head_dim, tokens]
};

// keys [head_dim, tokens] -> packed [tokens / width][head_dim][width] (whole tiles of key_tile_width()).
void pack_key_tiles(const float* keys, int64_t head_dim, int64_t tokens, float* packed) {
    const int64_t width = key_tile_width();
    for (int64_t d = 0; d < head_dim; ++d)
        for (int64_t tile = 0; tile < tokens / width; ++tile)
            std::memcpy(packed + (tile * head_dim + d) * width, keys + d * tokens + tile * width,
                        width * sizeof(float));
}

// values [head_dim, tokens] -> token-major [tokens, head_dim].
void transpose_values(const float* values, int64_t head_dim, int64_t tokens, float* transposed) {
    constexpr int64_t kBlock = 64;
    for (int64_t begin = 0; begin < tokens; begin += kBlock)
        for (int64_t d = 0; d < head_dim; ++d)
            for (int64_t k = begin; k < std::min(tokens, begin + kBlock); ++k)
                transposed[k * head_dim + d] = values[d * tokens + k];
}

// row[k] += rel_h[k / width] + rel_w[k % width] for a [height, width] map of keys; returns the largest result.
float add_relative_positions(float* row, const float* rel_h, const float* rel_w, int64_t height, int64_t width) {
    __m256 largest = _mm256_set1_ps(-3.402823466e38f);
    float largest_tail = -3.402823466e38f;
    for (int64_t ky = 0; ky < height; ++ky) {
        float* line = row + ky * width;
        const __m256 h = _mm256_set1_ps(rel_h[ky]);
        int64_t kx = 0;
        for (; kx + kFloatsPerVector <= width; kx += kFloatsPerVector) {
            const __m256 x = _mm256_add_ps(_mm256_loadu_ps(line + kx), _mm256_add_ps(h, _mm256_loadu_ps(rel_w + kx)));
            _mm256_storeu_ps(line + kx, x);
            largest = _mm256_max_ps(largest, x);
        }
        for (; kx < width; ++kx) {
            line[kx] += rel_h[ky] + rel_w[kx];
            largest_tail = std::max(largest_tail, line[kx]);
        }
    }
    alignas(32) float lanes[kFloatsPerVector];
    _mm256_store_ps(lanes, largest);
    return std::max(largest_tail, *std::max_element(lanes, lanes + kFloatsPerVector));
}

constexpr int kTermVectors = 8;  // vectors of relative terms (eight keys each) that axis_terms sums at once

// lanes[0:8 VECTORS] = q . table[:, 0:8 VECTORS] (`table` [head_dim][stride]), each vector's sum split over SPLITS
// accumulators (every SPLITS-th feature), so that a few vectors still keep several multiplies in flight.
template <int VECTORS>
void axis_term_vectors(const float* q, int64_t head_dim, const float* table, int64_t stride, float* lanes) {
    constexpr int kSplits = VECTORS >= 4 ? 1 : 4 / VECTORS;
    __m256 sum[VECTORS][kSplits];
    for (int v = 0; v < VECTORS; ++v)
        for (int s = 0; s < kSplits; ++s) sum[v][s] = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + kSplits <= head_dim; c += kSplits)
#pragma GCC unroll 4
        for (int s = 0; s < kSplits; ++s) {
            const __m256 feature = _mm256_set1_ps(q[c + s]);
#pragma GCC unroll 8
            for (int v = 0; v < VECTORS; ++v)
                sum[v][s] = _mm256_fmadd_ps(feature, _mm256_loadu_ps(table + (c + s) * stride + v * kFloatsPerVector),
                                            sum[v][s]);
        }
    for (; c < head_dim; ++c) {
        const __m256 feature = _mm256_set1_ps(q[c]);
        for (int v = 0; v < VECTORS; ++v)
            sum[v][0] = _mm256_fmadd_ps(feature, _mm256_loadu_ps(table + c * stride + v * kFloatsPerVector), sum[v][0]);
    }
    for (int v = 0; v < VECTORS; ++v) {
        for (int s = 1; s < kSplits; ++s) sum[v][0] = _mm256_add_ps(sum[v][0], sum[v][s]);
        _mm256_store_ps(lanes + v * kFloatsPerVector, sum[v][0]);
    }
}

// terms[0:size] = q . table[:, 0:size] for one query and one axis (`table` its row or column's [head_dim][padded]
// block, zeros after `size` up to whole vectors); `q` is unscaled, token-major [head_dim].
void axis_terms(const float* q, int64_t head_dim, const float* table, int64_t size, float* terms) {
    const int64_t padded = round_up(size, kFloatsPerVector);
    for (int64_t k = 0; k < padded; k += kTermVectors * kFloatsPerVector) {
        alignas(32) float lanes[kTermVectors * kFloatsPerVector];
        with_row_count<kTermVectors>(std::min<int64_t>(kTermVectors, (padded - k) / kFloatsPerVector), [&](auto count) {
            axis_term_vectors<decltype(count)::value>(q, head_dim, table + k, padded, lanes);
        });
        std::copy(lanes, lanes + std::min<int64_t>(kTermVectors * kFloatsPerVector, size - k), terms + k);
    }
}

// Per-thread room for one task: the queries [head_dim][kTaskQueries] (scaled), one query token-major [head_dim]
// (unscaled), their relative-position terms [kTaskQueries][height + width], score rows [kTaskQueries][score_stride]
// and output sums [kTaskQueries][head_dim].
struct VisionTaskBuffers {
    std::vector<float> queries, query, relative, scores, partial;
    int64_t score_stride;
};

// Queries [first, first + kTaskQueries) of head `bh` (fewer at the end): out[bh, :, q] for each.
void attend_vision_queries(const VisionAttentionArgs& a, const float* packed_keys, const float* values_by_token,
                           int64_t bh, int64_t first, VisionTaskBuffers& buffers) {
    const int64_t dim = a.head_dim, tokens = a.height * a.width, terms = a.height + a.width;
    const int64_t count = std::min(kTaskQueries, tokens - first), stride = buffers.score_stride;
    const int64_t batch = bh / a.heads, head = bh % a.heads;
    const float* query = a.qkv + (batch * 3 * a.heads + head) * dim * tokens;
    const float* keys = query + a.heads * dim * tokens;
    const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
    float* queries = buffers.queries.data();
    float* scores = buffers.scores.data();
    float* partial = buffers.partial.data();
    for (int64_t d = 0; d < dim; ++d)
        for (int64_t r = 0; r < kTaskQueries; ++r)
            queries[d * kTaskQueries + r] = r < count ? query[d * tokens + first + r] * scale : 0.0f;
    for (int64_t r = 0; r < count; ++r) {  // rel_h[q, ky] = q . R_h[qy, ky], rel_w[q, kx] = q . R_w[qx, kx]
        const int64_t token = first + r, qy = token / a.width, qx = token % a.width;
        for (int64_t d = 0; d < dim; ++d) buffers.query[d] = query[d * tokens + token];
        float* terms_of_query = buffers.relative.data() + r * terms;
        axis_terms(buffers.query.data(), dim, a.rel_h + qy * dim * round_up(a.height, kFloatsPerVector), a.height,
                   terms_of_query);
        axis_terms(buffers.query.data(), dim, a.rel_w + qx * dim * round_up(a.width, kFloatsPerVector), a.width,
                   terms_of_query + a.height);
    }
    const int64_t tiled = tokens / key_tile_width() * key_tile_width();
    score_task_keys(queries, dim, count, packed_keys + bh * tiled * dim, keys, 1, tokens, tokens, scores, stride);
    float inverse[kTaskQueries] = {};
    for (int64_t r = 0; r < count; ++r) {
        const float* terms_of_query = buffers.relative.data() + r * terms;
        float* row = scores + r * stride;
        const float largest = add_relative_positions(row, terms_of_query, terms_of_query + a.height, a.height, a.width);
        inverse[r] = 1.0f / exponentiate_in_place(row, tokens, largest);
    }
    weigh_task_values(scores, stride, values_by_token + bh * tokens * dim, dim, count, tokens, partial);
    float* out = a.out + bh * dim * tokens;
    for (int64_t r = 0; r < count; ++r)
        for (int64_t d = 0; d < dim; ++d) out[d * tokens + first + r] = partial[r * dim + d] * inverse[r];
}

// Every head's attention: keys packed and values transposed (all heads, split over the threads), then the tasks.
void run_vision_attention(const VisionAttentionArgs& a, int num_threads) {
    const int64_t dim = a.head_dim, tokens = a.height * a.width, heads = a.batch * a.heads;
    const int64_t tiled = tokens / key_tile_width() * key_tile_width();
    const int64_t tasks_per_head = (tokens + kTaskQueries - 1) / kTaskQueries;
    std::vector<float> packed_keys(heads * tiled * dim), values_by_token(heads * tokens * dim);
#pragma omp parallel num_threads(num_threads)
    {
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < heads; ++bh) {
            const float* keys = a.qkv + ((bh / a.heads * 3 + 1) * a.heads + bh % a.heads) * dim * tokens;
            const float* values = keys + a.heads * dim * tokens;
            pack_key_tiles(keys, dim, tokens, packed_keys.data() + bh * tiled * dim);
            transpose_values(values, dim, tokens, values_by_token.data() + bh * tokens * dim);
        }
        VisionTaskBuffers buffers;
        buffers.score_stride = tokens + kPanelWidth;  // a padded stride: score rows 2^k floats apart share cache sets
        buffers.queries.resize(dim * kTaskQueries);
        buffers.query.resize(dim);
        buffers.relative.resize(kTaskQueries * (a.height + a.width));
        buffers.scores.resize(kTaskQueries * buffers.score_stride);
        buffers.partial.resize(kTaskQueries * dim);
#pragma omp for schedule(static)
        for (int64_t task = 0; task < heads * tasks_per_head; ++task)
            attend_vision_queries(a, packed_keys.data(), values_by_token.data(), task / tasks_per_head,
                                  task % tasks_per_head * kTaskQueries, buffers);
    }
}

// Where one decoder layer's tensors are, for decode_layers: float32, but for the seven product weights, which are
// Paddle Linear weights [in, out], all float32 or all bfloat16.
struct DecodeLayerTensors {
    const float* input_norm;
    const void* q_weight;
    const float* q_bias;
    const void* k_weight;
    const float* k_bias;
    const void* v_weight;
    const float* v_bias;
    const void* o_weight;
    const float* post_attention_norm;
    const void* gate_weight;
    const void* up_weight;
    const void* down_weight;
    float* keys;                // this layer's cache buffers (see CachedAttentionArgs)
    float* values;
};

struct DecodeLayersArgs {
    float* hidden;              // [rows, hidden_size]: the new tokens' embeddings in, the last layer's output out
    int64_t rows, hidden_size, intermediate_size, layers;
    const DecodeLayerTensors* layer;  // [layers]
    int64_t weights_are_bfloat16;
    float eps;
    CachedAttentionArgs attention;  // the step's tables, positions and bias (one new token); its per-layer pointers
                                    // are set here
};

template <typename W>
void decode_layers_with(const DecodeLayersArgs& a, int num_threads) {
    CachedAttentionArgs attention = a.attention;
    const int64_t rows = a.rows, hidden = a.hidden_size, intermediate = a.intermediate_size;
    const int64_t query_features = attention.heads * attention.head_dim;
    const int64_t kv_features = attention.kv_heads * attention.head_dim;
    std::vector<float> normed(rows * hidden), query(rows * query_features), keys(rows * kv_features),
        values(rows * kv_features), attended(rows * query_features), gate(rows * intermediate),
        up(rows * intermediate), mixed(rows * hidden);
    auto project = [&](const float* x, int64_t in_features, const void* weight, int64_t out_features,
                       const float* bias, float* out) {
        product(x, rows, in_features, static_cast<const W*>(weight), out_features, 0, bias, out, num_threads);
    };
    for (int64_t l = 0; l < a.layers; ++l) {
        const DecodeLayerTensors& t = a.layer[l];
        rms_norm_rows(a.hidden, rows, hidden, t.input_norm, a.eps, normed.data());
        project(normed.data(), hidden, t.q_weight, query_features, t.q_bias, query.data());
        project(normed.data(), hidden, t.k_weight, kv_features, t.k_bias, keys.data());
        project(normed.data(), hidden, t.v_weight, kv_features, t.v_bias, values.data());
        attention.query = query.data();
        attention.new_keys = keys.data();
        attention.new_values = values.data();
        attention.keys = t.keys;
        attention.values = t.values;
        attention.out = attended.data();
        run_cached_attention(attention, num_threads);
        project(attended.data(), query_features, t.o_weight, hidden, nullptr, mixed.data());
        add_in_place(a.hidden, mixed.data(), rows * hidden);
        rms_norm_rows(a.hidden, rows, hidden, t.post_attention_norm, a.eps, normed.data());
        project(normed.data(), hidden, t.gate_weight, intermediate, nullptr, gate.data());
        project(normed.data(), hidden, t.up_weight, intermediate, nullptr, up.data());
        silu_times(gate.data(), up.data(), rows * intermediate, num_threads);
        project(gate.data(), intermediate, t.down_weight, hidden, nullptr, mixed.data());
        add_in_place(a.hidden, mixed.data(), rows * hidden);
    }
}

}  // namespace

extern "C" {

int decode_cpu_supported() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

// Run the attention tiles on AVX-512 when `wanted` and this CPU has it, and with them the few rows' products this CPU
// runs faster there (see wide_products); decode_cpu.py asks for them on loading. Returns whether the tiles are now
// wide. Not while a kernel runs.
int use_wide_tiles(int wanted) {
    tiles_are_wide = wanted && __builtin_cpu_supports("avx512f");
    wide_bfloat16_products = tiles_are_wide && cpu_has_amx();
    wide_float32_products = tiles_are_wide && !cpu_has_amx();
    return tiles_are_wide;
}

// Run a few rows' products on bfloat16 and on float32 weights on AVX-512 or not, whatever this CPU's choice (for
// tests, which reach every path on any CPU with AVX-512); returns 0, changing nothing, on a CPU without it.
int use_wide_products(int bfloat16_weights, int float32_weights) {
    if (!__builtin_cpu_supports("avx512f")) return 0;
    wide_bfloat16_products = bfloat16_weights;
    wide_float32_products = float32_weights;
    return 1;
}

// Whether a few rows' products on bfloat16 (else float32) weights now run on AVX-512.
int products_are_wide(int weights_are_bfloat16) {
    return weights_are_bfloat16 ? wide_bfloat16_products : wide_float32_products;
}

// One cached attention step: a decode step or a prompt's prefill (see run_cached_attention).
void cached_attention(const CachedAttentionArgs* args, int num_threads) { run_cached_attention(*args, num_threads); }

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight, for `rows` rows of `features` floats, the rows
// shared among the threads.
void rms_norm(const float* x, int64_t rows, int64_t features, const float* weight, float eps, float* out,
              int num_threads) {
#pragma omp parallel for num_threads(num_threads) schedule(static) if (rows > 1)
    for (int64_t r = 0; r < rows; ++r) rms_norm_rows(x + r * features, 1, features, weight, eps, out + r * features);
}

// gate[0:count] = silu(gate) * up: SwiGLU's product in place (see silu_times).
void silu_mul(float* gate, const float* up, int64_t count, int num_threads) { silu_times(gate, up, count, num_threads); }

// x[o, f, i] += bias[f] for x [outer, features, inner]: a product's bias, token-major (inner 1) or feature-major
// (inner = tokens), the rows of x (or its feature lines) shared among the threads.
void add_bias(float* x, int64_t outer, int64_t features, int64_t inner, const float* bias, int num_threads) {
    if (inner == 1) {
#pragma omp parallel for num_threads(num_threads) schedule(static)
        for (int64_t row = 0; row < outer; ++row) add_in_place(x + row * features, bias, features);
        return;
    }
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t line = 0; line < outer * features; ++line) {
        float* values = x + line * inner;
        const float value = bias[line % features];
        for (int64_t i = 0; i < inner; ++i) values[i] += value;
    }
}

// out[0:count] = the bfloat16 in[0:count] as float32 (see widen_bfloat16).
void widen_bf16(const uint16_t* in, int64_t count, float* out, int num_threads) {
    widen_bfloat16(in, count, out, num_threads);
}

// out[0:count] = in[0:count] rounded to bfloat16 (see narrow_bfloat16).
void narrow_bf16(const float* in, int64_t count, uint16_t* out, int num_threads) {
    narrow_bfloat16(in, count, out, num_threads);
}

// Whether amx_linear can run here (AMX's bfloat16 tiles, allowed by Linux); asks Linux for them the first time.
int amx_linear_supported() { return amx_usable(); }

// A prompt's product on AMX (see run_amx_linear); only where amx_linear_supported().
void amx_linear(const AmxLinearArgs* args, int num_threads) { run_amx_linear(*args, num_threads); }

// The vision encoder's attention for one block (see run_vision_attention).
void vision_attention(const VisionAttentionArgs* args, int num_threads) { run_vision_attention(*args, num_threads); }

// Every decoder layer for one new token per row (see decode_layers_with); `hidden` is updated in place.
void decode_layers(const DecodeLayersArgs* args, int num_threads) {
    if (args->weights_are_bfloat16)
        decode_layers_with<bfloat16>(*args, num_threads);
    else
        decode_layers_with<float>(*args, num_threads);
}

// out[rows, out_features] = x[rows, in_features] @ W + bias (bias may be null), each contiguous (see product).
void skinny_matmul(const float* x, int64_t rows, int64_t in_features, const float* weight, int64_t out_features,
                   int weight_is_out_by_in, const float* bias, float* out, int num_threads) {
    product(x, rows, in_features, weight, out_features, weight_is_out_by_in, bias, out, num_threads);
}

// The same with W in bfloat16 (`weight` points at its 16-bit values).
void skinny_matmul_bf16(const float* x, int64_t rows, int64_t in_features, const uint16_t* weight,
                        int64_t out_features, int weight_is_out_by_in, const float* bias, float* out, int num_threads) {
    product(x, rows, in_features, weight, out_features, weight_is_out_by_in, bias, out, num_threads);
}

}
