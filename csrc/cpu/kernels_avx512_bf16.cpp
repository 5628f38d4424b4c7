// The fused recurrence's product for bfloat16 layers on AVX512-BF16 (ISA avx512_bf16): a float32
// product whose weights and input rows are rounded to bfloat16, on vdpbf16ps, which adds two
// bfloat16 products to each float32 lane: twice the multiply-adds of an FMA. A bfloat16 layer's
// weights and input are bfloat16 already; what this rounds is the state each step hands the next
// (and in the backward, the gate gradients), where torch.nn's oneDNN path rounds them too. The
// accumulators, biases and gate math stay float32. Entered only for panels packed here
// (Panels::bf16), which panels_for makes only on CPUs with AVX512-BF16.
#include "recurrence.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fusedrnn::cpu::avx512_bf16 {
namespace {

constexpr int64_t L = 16;  // float32 lanes of a vector, and bfloat16 pairs
// Input rows rounded at a time: 64 KB of them, so they stay in the cache while every panel of the
// thread passes over them.
constexpr int64_t kChunkPairs = 1 << 14;

__mmask16 first_lanes(int64_t count) {
  return count >= L ? __mmask16(0xffff) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1);
}

// rows [rows, K] of float32 -> [rows, pairs] bfloat16 pairs (k, k + 1), pairs = K / 2 rounded
// up, the last one padded with zero; rounded to nearest even.
void round_rows(const float* in, int64_t rows, int64_t K, uint32_t* out) {
  const int64_t pairs = (K + 1) / 2;
  for (int64_t r = 0; r < rows; ++r, in += K, out += pairs) {
    for (int64_t k = 0; k < K; k += 2 * L) {
      const __m512 low = _mm512_maskz_loadu_ps(first_lanes(K - k), in + k);
      const __m512 high = _mm512_maskz_loadu_ps(first_lanes(K - k - L), in + k + L);
      const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(high, low);
      _mm512_mask_storeu_epi32(out + k / 2, first_lanes((K - k + 1) / 2), both);
    }
  }
}

// out[r, columns of v] (+)= bias + sum over pairs of in[r, pair] . panel[pair, v], for MR rows
// and the NV vectors of one panel. Fewer than eight accumulators alternate between two sets, so
// that the dot products' latency hides behind independent work.
template <int MR, int NV>
void tile(const uint32_t* in, int64_t pairs, const uint32_t* panel, float* out,
          int64_t out_stride, const Columns* cols, bool accumulate, const float* bias) {
  constexpr int S = MR * NV < 8 ? 2 : 1;
  if (accumulate) {  // as the float32 tile: the rows added to arrive while the loop runs
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) __builtin_prefetch(out + r * out_stride + cols[v].first, 1);
  }
  __m512 acc[S][MR][NV];
  for (int v = 0; v < NV; ++v) {
    const __m512 start = bias ? _mm512_maskz_loadu_ps(first_lanes(cols[v].lanes),
                                                      bias + cols[v].first)
                              : _mm512_setzero_ps();
    for (int r = 0; r < MR; ++r) {
      acc[0][r][v] = start;
      if constexpr (S == 2) acc[1][r][v] = _mm512_setzero_ps();
    }
  }
  const auto accumulate_pair = [&](int s, int64_t j) {
    __m512bh w[NV];
    for (int v = 0; v < NV; ++v) w[v] = (__m512bh)_mm512_loadu_si512(panel + (j * NV + v) * L);
    for (int r = 0; r < MR; ++r) {
      const __m512bh x = (__m512bh)_mm512_set1_epi32(int(in[r * pairs + j]));
      for (int v = 0; v < NV; ++v) acc[s][r][v] = _mm512_dpbf16_ps(acc[s][r][v], x, w[v]);
    }
  };
  int64_t j = 0;
  for (; j + S <= pairs; j += S)
    for (int s = 0; s < S; ++s) accumulate_pair(s, j + s);
  for (; j < pairs; ++j) accumulate_pair(0, j);
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      if (cols[v].lanes == 0) continue;
      __m512 sum = acc[0][r][v];
      if constexpr (S == 2) sum = _mm512_add_ps(sum, acc[1][r][v]);
      const __mmask16 lanes = first_lanes(cols[v].lanes);
      float* o = out + r * out_stride + cols[v].first;
      if (accumulate) sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(lanes, o));
      _mm512_mask_storeu_ps(o, lanes, sum);
    }
  }
}

// The `left` rows after the last whole tile (fewer than R + 1), as one tile.
template <int NV, int R>
void rows_left(int64_t left, const uint32_t* in, int64_t pairs, const uint32_t* panel, float* out,
               int64_t stride, const Columns* cols, bool accumulate, const float* bias) {
  if constexpr (R > 0) {
    if (left == R) return tile<R, NV>(in, pairs, panel, out, stride, cols, accumulate, bias);
    rows_left<NV, R - 1>(left, in, pairs, panel, out, stride, cols, accumulate, bias);
  }
}

// Every row of the product for panels [begin, end): the rows rounded a chunk at a time, then each
// panel over the chunk, MR rows at a time (accumulators in three quarters of the 32 registers).
template <int NV>
void panels_as(const Product& product, int64_t begin, int64_t end) {
  constexpr int MR = 24 / NV;
  const Panels& panels = *product.panels;
  const int64_t K = panels.depth, pairs = panels.packed_depth() / 2;
  const int64_t stride = panels.gates * panels.hidden;
  const float* in = static_cast<const float*>(product.in);
  const float* bias = static_cast<const float*>(product.bias);
  float* out = static_cast<float*>(product.out);
  const int64_t chunk = std::max<int64_t>(MR, kChunkPairs / std::max<int64_t>(pairs, 1) / MR * MR);
  // Each thread rounds every row it multiplies, the team's other threads the same rows: a copy of
  // them per thread, no barrier, and at most a few percent of the product's work.
  thread_local std::vector<uint32_t> rounded;
  rounded.resize(std::max<size_t>(rounded.size(), size_t(std::min(chunk, product.rows) * pairs)));
  for (int64_t first = 0; first < product.rows; first += chunk) {
    const int64_t rows = std::min(chunk, product.rows - first);
    round_rows(in + first * K, rows, K, rounded.data());
    for (int64_t p = begin; p < end; ++p) {
      Columns cols[NV];
      for (int v = 0; v < NV; ++v) cols[v] = columns(panels, p, v);
      const uint32_t* panel = static_cast<const uint32_t*>(product.packed) + p * pairs * NV * L;
      float* out_rows = out + first * stride;
      int64_t r = 0;
      for (; r + MR <= rows; r += MR)
        tile<MR, NV>(rounded.data() + r * pairs, pairs, panel, out_rows + r * stride, stride,
                     cols, product.accumulate, bias);
      rows_left<NV, MR - 1>(rows - r, rounded.data() + r * pairs, pairs, panel,
                            out_rows + r * stride, stride, cols, product.accumulate, bias);
    }
  }
}

}  // namespace

void pack(const Panels& panels, const float* w, bool transposed, void* packed) {
  const int64_t K = panels.depth, pairs = panels.packed_depth() / 2;
  const int64_t N = panels.gates * panels.hidden, width = panels.vectors() * L;
  std::vector<float> column(K);  // W[:, n]
  std::vector<uint32_t> column_pairs(pairs);
  for (int64_t p = 0; p < panels.count; ++p) {
    for (int64_t v = 0; v < panels.vectors(); ++v) {
      const Columns c = columns(panels, p, v);
      // dst[j * width + l] = (W[2j, c.first + l], W[2j + 1, c.first + l])
      uint32_t* dst = static_cast<uint32_t*>(packed) + p * pairs * width + v * L;
      for (int64_t l = 0; l < L; ++l) {
        const int64_t n = c.first + l;
        if (l >= c.lanes) {
          for (int64_t j = 0; j < pairs; ++j) dst[j * width + l] = 0;
          continue;
        }
        if (transposed) {
          round_rows(w + n * K, 1, K, column_pairs.data());  // row n of w is column n of W
        } else {
          for (int64_t k = 0; k < K; ++k) column[k] = w[k * N + n];
          round_rows(column.data(), 1, K, column_pairs.data());
        }
        for (int64_t j = 0; j < pairs; ++j) dst[j * width + l] = column_pairs[j];
      }
    }
  }
}

void product_panels(const Product& product, int64_t begin, int64_t end) {
  if (product.panels->vectors() == 3) return panels_as<3>(product, begin, end);
  panels_as<4>(product, begin, end);
}

}  // namespace fusedrnn::cpu::avx512_bf16
#endif
