// The two memory-bound halves of a float32 decode step on CPU, built and loaded by decode_cpu.py (AVX2 + FMA;
// decode_cpu_supported() tells whether this CPU can run them).
//
// skinny_matmul: a few rows (1-8, one per sequence) times a large weight matrix, read once from memory. MKL runs a
// one-row product on one core (~21 GB/s here) and an eight-row product at ~6-15 GB/s; these loops keep every core
// streaming (~32 and ~23 GB/s).
//   out[rows, out_features] = x[rows, in_features] @ W (+ bias)
//   W is [in_features, out_features] (a Paddle Linear weight) or [out_features, in_features] (an embedding table).
//
// decode_attention: one new query per sequence against the filled columns of a feature-major KV cache, reading
// each cached key and value once, and none of the cache's free capacity.

#include <immintrin.h>
#include <omp.h>
#include <stdint.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kFloatsPerVector = 8;
constexpr int64_t kPanelVectors = 2;                 // a panel is 16 output columns: one 64-byte line per weight row
constexpr int64_t kPanelWidth = kPanelVectors * kFloatsPerVector;
constexpr int64_t kRowsPerBlock = 4;                 // x rows held in registers at once (4 x 2 accumulators)
constexpr int64_t kDepthPerBlock = 128;              // weight rows per pass over a panel
constexpr int64_t kPanelsPrefetchedAhead = 2;

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

float horizontal_sum(__m256 vector) {
    const __m128 pairs = _mm_add_ps(_mm256_castps256_ps128(vector), _mm256_extractf128_ps(vector, 1));
    const __m128 halves = _mm_add_ps(pairs, _mm_movehl_ps(pairs, pairs));
    return _mm_cvtss_f32(_mm_add_ss(halves, _mm_shuffle_ps(halves, halves, 1)));
}

// One row, W [in, out]: partial[out] = x[begin:end] @ W[begin:end, :], reading four weight rows per sweep so that
// every thread streams its own contiguous slab of W.
void one_row_slab(const float* x, const float* weight, int64_t out_features, Range depth, float* partial) {
    std::fill(partial, partial + out_features, 0.0f);
    int64_t k = depth.begin;
    for (; k + 4 <= depth.end; k += 4) {
        const float* row0 = weight + k * out_features;
        const float* row1 = row0 + out_features;
        const float* row2 = row1 + out_features;
        const float* row3 = row2 + out_features;
        const __m256 x0 = _mm256_broadcast_ss(x + k), x1 = _mm256_broadcast_ss(x + k + 1);
        const __m256 x2 = _mm256_broadcast_ss(x + k + 2), x3 = _mm256_broadcast_ss(x + k + 3);
        int64_t j = 0;
        for (; j + kFloatsPerVector <= out_features; j += kFloatsPerVector) {
            __m256 sum = _mm256_loadu_ps(partial + j);
            sum = _mm256_fmadd_ps(x0, _mm256_loadu_ps(row0 + j), sum);
            sum = _mm256_fmadd_ps(x1, _mm256_loadu_ps(row1 + j), sum);
            sum = _mm256_fmadd_ps(x2, _mm256_loadu_ps(row2 + j), sum);
            sum = _mm256_fmadd_ps(x3, _mm256_loadu_ps(row3 + j), sum);
            _mm256_storeu_ps(partial + j, sum);
        }
        for (; j < out_features; ++j) partial[j] += x[k] * row0[j] + x[k + 1] * row1[j] + x[k + 2] * row2[j] + x[k + 3] * row3[j];
    }
    for (; k < depth.end; ++k)
        for (int64_t j = 0; j < out_features; ++j) partial[j] += x[k] * weight[k * out_features + j];
}

void one_row_in_by_out(const float* x, int64_t in_features, const float* weight, int64_t out_features,
                       const float* bias, float* out, int num_threads) {
    thread_local std::vector<float> partials;
    partials.resize(static_cast<size_t>(out_features) * num_threads);
    float* const partial_base = partials.data();
#pragma omp parallel num_threads(num_threads)
    {
        const int thread = omp_get_thread_num(), threads = omp_get_num_threads();
        one_row_slab(x, weight, out_features, share(in_features, 4), partial_base + thread * out_features);
#pragma omp barrier
        const Range columns = share(out_features, 1);
        for (int64_t j = columns.begin; j < columns.end; ++j) {
            float total = bias ? bias[j] : 0.0f;
            for (int t = 0; t < threads; ++t) total += partial_base[t * out_features + j];
            out[j] = total;
        }
    }
}

// ROWS x rows, one 16-column panel, weight rows [depth.begin, depth.end): accumulators stay in registers; `out`
// holds the running sum between passes. The panel `prefetch_offset` columns ahead is fetched meanwhile.
template <int ROWS>
void panel_pass(const float* x, int64_t in_features, const float* weight, int64_t out_features, Range depth,
                bool first_pass, int64_t prefetch_offset, float* out) {
    __m256 sum[ROWS][kPanelVectors];
#pragma GCC unroll 4
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 2
        for (int v = 0; v < kPanelVectors; ++v) sum[r][v] = _mm256_setzero_ps();
    for (int64_t k = depth.begin; k < depth.end; ++k) {
        const float* row = weight + k * out_features;
        _mm_prefetch(reinterpret_cast<const char*>(row + prefetch_offset), _MM_HINT_T0);
        __m256 w[kPanelVectors];
#pragma GCC unroll 2
        for (int v = 0; v < kPanelVectors; ++v) w[v] = _mm256_loadu_ps(row + v * kFloatsPerVector);
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

void panel_pass_rows(int64_t rows, const float* x, int64_t in_features, const float* weight, int64_t out_features,
                     Range depth, bool first_pass, int64_t prefetch_offset, float* out) {
    for (int64_t r = 0; r < rows; r += kRowsPerBlock) {
        const float* x_block = x + r * in_features;
        float* out_block = out + r * out_features;
        switch (std::min(kRowsPerBlock, rows - r)) {
            case 4: panel_pass<4>(x_block, in_features, weight, out_features, depth, first_pass, prefetch_offset, out_block); break;
            case 3: panel_pass<3>(x_block, in_features, weight, out_features, depth, first_pass, prefetch_offset, out_block); break;
            case 2: panel_pass<2>(x_block, in_features, weight, out_features, depth, first_pass, prefetch_offset, out_block); break;
            default: panel_pass<1>(x_block, in_features, weight, out_features, depth, first_pass, prefetch_offset, out_block);
        }
    }
}

// Several rows, W [in, out]: each thread owns a run of 16-column panels and sweeps them one depth block at a time,
// so the x rows reuse each weight line from L1 and the weight stream moves along whole rows.
void rows_in_by_out(const float* x, int64_t rows, int64_t in_features, const float* weight, int64_t out_features,
                    const float* bias, float* out, int num_threads) {
    const int64_t panel_columns = out_features / kPanelWidth * kPanelWidth;
#pragma omp parallel num_threads(num_threads)
    {
        const Range columns = share(panel_columns, kPanelWidth);
        for (int64_t k = 0; k < in_features; k += kDepthPerBlock) {
            const Range depth{k, std::min(in_features, k + kDepthPerBlock)};
            for (int64_t j = columns.begin; j + kPanelWidth <= columns.end; j += kPanelWidth) {
                const int64_t ahead = std::min(kPanelsPrefetchedAhead * kPanelWidth, columns.end - kPanelWidth - j);
                panel_pass_rows(rows, x, in_features, weight + j, out_features, depth, k == 0, ahead, out + j);
            }
        }
        const Range leftover = omp_get_thread_num() == omp_get_num_threads() - 1
                                   ? Range{panel_columns, out_features} : Range{0, 0};
        for (int64_t j = leftover.begin; j < leftover.end; ++j)
            for (int64_t r = 0; r < rows; ++r) {
                float total = 0.0f;
                for (int64_t k = 0; k < in_features; ++k) total += x[r * in_features + k] * weight[k * out_features + j];
                out[r * out_features + j] = total;
            }
        if (bias)
            for (int64_t r = 0; r < rows; ++r)
                for (int64_t j = columns.begin; j < std::max(columns.end, leftover.end); ++j) out[r * out_features + j] += bias[j];
    }
}

// ROWS x rows against OUTPUTS weight rows of W [out, in]: dot products, accumulated in registers.
template <int ROWS, int OUTPUTS>
void dot_block(const float* x, int64_t in_features, const float* weight, const float* bias, int64_t out_features,
               float* out) {
    __m256 sum[ROWS][OUTPUTS];
#pragma GCC unroll 4
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
        for (int o = 0; o < OUTPUTS; ++o) sum[r][o] = _mm256_setzero_ps();
    const int64_t vector_depth = in_features / kFloatsPerVector * kFloatsPerVector;
    for (int64_t k = 0; k < vector_depth; k += kFloatsPerVector) {
        __m256 w[OUTPUTS];
#pragma GCC unroll 4
        for (int o = 0; o < OUTPUTS; ++o) w[o] = _mm256_loadu_ps(weight + o * in_features + k);
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
            for (int64_t k = vector_depth; k < in_features; ++k) total += x[r * in_features + k] * weight[o * in_features + k];
            out[r * out_features + o] = total;
        }
}

template <int OUTPUTS>
void dot_block_rows(int64_t rows, const float* x, int64_t in_features, const float* weight, const float* bias,
                    int64_t out_features, float* out) {
    for (int64_t r = 0; r < rows; r += kRowsPerBlock) {
        const float* x_block = x + r * in_features;
        float* out_block = out + r * out_features;
        switch (std::min(kRowsPerBlock, rows - r)) {
            case 4: dot_block<4, OUTPUTS>(x_block, in_features, weight, bias, out_features, out_block); break;
            case 3: dot_block<3, OUTPUTS>(x_block, in_features, weight, bias, out_features, out_block); break;
            case 2: dot_block<2, OUTPUTS>(x_block, in_features, weight, bias, out_features, out_block); break;
            default: dot_block<1, OUTPUTS>(x_block, in_features, weight, bias, out_features, out_block);
        }
    }
}

// W [out, in]: each thread owns a contiguous run of weight rows; one x row reads four weight rows at a time,
// several x rows two at a time (4 x 2 accumulators).
void rows_out_by_in(const float* x, int64_t rows, int64_t in_features, const float* weight, int64_t out_features,
                    const float* bias, float* out, int num_threads) {
    const int64_t step = rows == 1 ? 4 : 2;
#pragma omp parallel num_threads(num_threads)
    {
        const Range outputs = share(out_features, step);
        int64_t o = outputs.begin;
        for (; o + step <= outputs.end; o += step) {
            const float* block_weight = weight + o * in_features;
            const float* block_bias = bias ? bias + o : nullptr;
            if (rows == 1) dot_block<1, 4>(x, in_features, block_weight, block_bias, out_features, out + o);
            else dot_block_rows<2>(rows, x, in_features, block_weight, block_bias, out_features, out + o);
        }
        for (; o < outputs.end; ++o)
            dot_block_rows<1>(rows, x, in_features, weight + o * in_features, bias ? bias + o : nullptr, out_features, out + o);
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

// probabilities[0:count] = softmax(scores[0:count]) in place.
void softmax_in_place(float* scores, int64_t count) {
    float largest = -3.402823466e38f;
    for (int64_t c = 0; c < count; ++c) largest = std::max(largest, scores[c]);
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
    const float inverse = 1.0f / sum;
    for (int64_t k = 0; k < count; ++k) scores[k] *= inverse;
}

// Ask for row `row` of `count` floats ahead of use: short rows `capacity` apart defeat the hardware prefetcher.
void prefetch_row(const float* row, int64_t count) {
    for (int64_t c = 0; c < count; c += 16) _mm_prefetch(reinterpret_cast<const char*>(row + c), _MM_HINT_T0);
}

// One head: out[d] = softmax(scale * q . K[:, :count] + bias) . V[d, :count]; K, V rows are `capacity` apart.
void attend_one_head(const float* query, int64_t head_dim, const float* keys, const float* values, int64_t capacity,
                     int64_t count, const float* bias, float scale, float* scores, float* out) {
    for (int64_t c = 0; c < count; ++c) scores[c] = bias ? bias[c] : 0.0f;
    for (int64_t d = 0; d < head_dim; ++d) {
        const __m256 q = _mm256_set1_ps(query[d] * scale);
        const float* key_row = keys + d * capacity;
        prefetch_row(key_row + 2 * capacity, d + 2 < head_dim ? count : 0);
        int64_t c = 0;
        for (; c + kFloatsPerVector <= count; c += kFloatsPerVector)
            _mm256_storeu_ps(scores + c, _mm256_fmadd_ps(q, _mm256_loadu_ps(key_row + c), _mm256_loadu_ps(scores + c)));
        for (; c < count; ++c) scores[c] += query[d] * scale * key_row[c];
    }
    softmax_in_place(scores, count);
    for (int64_t d = 0; d < head_dim; ++d) {
        const float* value_row = values + d * capacity;
        prefetch_row(value_row + 2 * capacity, d + 2 < head_dim ? count : 0);
        __m256 sum = _mm256_setzero_ps();
        int64_t c = 0;
        for (; c + kFloatsPerVector <= count; c += kFloatsPerVector)
            sum = _mm256_fmadd_ps(_mm256_loadu_ps(scores + c), _mm256_loadu_ps(value_row + c), sum);
        float total = horizontal_sum(sum);
        for (; c < count; ++c) total += scores[c] * value_row[c];
        out[d] = total;
    }
}

}  // namespace

extern "C" {

int decode_cpu_supported() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

// out[b, h, :] for query [batch, heads, head_dim] against keys/values [batch, kv_heads, head_dim, capacity], of
// which the first key_count columns are filled; query head h reads KV head h / (heads / kv_heads). bias (may be
// null) is additive, one row of >= key_count floats per (b, h), rows bias_row_stride apart (0: one shared row).
void decode_attention(const float* query, int64_t batch, int64_t heads, int64_t head_dim, const float* keys,
                      const float* values, int64_t kv_heads, int64_t capacity, int64_t key_count, const float* bias,
                      int64_t bias_row_stride, float scale, float* out, int num_threads) {
    const int64_t group = heads / kv_heads;
#pragma omp parallel num_threads(num_threads)
    {
        thread_local std::vector<float> scores;
        scores.resize(key_count);
#pragma omp for schedule(static)
        for (int64_t row = 0; row < batch * heads; ++row) {
            const int64_t b = row / heads, kv = b * kv_heads + row % heads / group;
            attend_one_head(query + row * head_dim, head_dim, keys + kv * head_dim * capacity,
                            values + kv * head_dim * capacity, capacity, key_count,
                            bias ? bias + row * bias_row_stride : nullptr, scale, scores.data(), out + row * head_dim);
        }
    }
}

// out[rows, out_features] = x[rows, in_features] @ W + bias (bias may be null). All arrays are contiguous float32.
// weight_is_out_by_in = 0: W is [in_features, out_features]; 1: W is [out_features, in_features].
void skinny_matmul(const float* x, int64_t rows, int64_t in_features, const float* weight, int64_t out_features,
                   int weight_is_out_by_in, const float* bias, float* out, int num_threads) {
    if (weight_is_out_by_in)
        rows_out_by_in(x, rows, in_features, weight, out_features, bias, out, num_threads);
    else if (rows == 1)
        one_row_in_by_out(x, in_features, weight, out_features, bias, out, num_threads);
    else
        rows_in_by_out(x, rows, in_features, weight, out_features, bias, out, num_threads);
}

}
