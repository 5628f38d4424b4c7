// The fused recurrence's product for bfloat16 layers on AVX512-BF16 (ISA avx512_bf16): a float32
// product whose weights and input rows are rounded to bfloat16, on vdpbf16ps, which adds two
// bfloat16 products to each float32 lane: twice the multiply-adds of an FMA. A bfloat16 layer's
// weights and input are bfloat16 already; what this rounds is the state each step hands the next
// (and in the backward, the gate gradients), where torch.nn's oneDNN path rounds them too. The
// accumulators, biases and gate math stay float32. Entered only for panels packed here
// (Panels::bf16), which panels_for makes only on CPUs with AVX512-BF16.
//
// On AMX (ISA amx) the same panels, padded to whole tiles, feed TDPBF16PS, whose one instruction
// does 16 rows by 16 columns by 32 terms (sixteen times a vdpbf16ps) into float32 tiles. A tile
// has 16 rows whatever the product's, so below kMinTileRows rows the vector kernel runs instead.
#include "recurrence.h"

#if defined(__x86_64__) && defined(__GNUC__)
// The compiler emits AMX instructions only for the tile intrinsics, which only the amx ISA's
// products reach.
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16")
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
// A loop's step rounds its rows whole, once a thread, where they take at most this: every panel
// range the thread runs in the step (two panels at a time where the team shares them out) then
// reads them. Rounded a range at a time, they took 14.5% of a bfloat16 LSTM's inference on AMX
// (T=100 B=64 H=512, where the tile products took 44%).
constexpr int64_t kStepRowsBytes = 1 << 20;

__mmask16 first_lanes(int64_t count) {
  return count >= L ? __mmask16(0xffff) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1);
}

// rows [rows, K] of float32 -> [rows, pairs] bfloat16 pairs (k, k + 1), rounded to nearest
// even, the pairs past K zero (pairs >= K / 2 rounded up).
void round_rows(const float* in, int64_t rows, int64_t K, int64_t pairs, uint32_t* out) {
  for (int64_t r = 0; r < rows; ++r, in += K, out += pairs) {
    for (int64_t k = 0; k < 2 * pairs; k += 2 * L) {
      const __m512 low = _mm512_maskz_loadu_ps(first_lanes(K - k), in + k);
      const __m512 high = _mm512_maskz_loadu_ps(first_lanes(K - k - L), in + k + L);
      const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(high, low);
      _mm512_mask_storeu_epi32(out + k / 2, first_lanes(pairs - k / 2), both);
    }
  }
}

// out[r, columns of v] (+)= bias + sum over pairs of in[r, pair] . panel[pair, v], for MR rows
// (in_stride pairs apart) and the NV vectors of one panel. Fewer than eight accumulators
// alternate between two sets, so that the dot products' latency hides behind independent work.
template <int MR, int NV>
void tile(const uint32_t* in, int64_t pairs, int64_t in_stride, const uint32_t* panel, float* out,
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
      const __m512bh x = (__m512bh)_mm512_set1_epi32(int(in[r * in_stride + j]));
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
void rows_left(int64_t left, const uint32_t* in, int64_t pairs, int64_t in_stride,
               const uint32_t* panel, float* out, int64_t stride, const Columns* cols,
               bool accumulate, const float* bias) {
  if constexpr (R > 0) {
    if (left == R)
      return tile<R, NV>(in, pairs, in_stride, panel, out, stride, cols, accumulate, bias);
    rows_left<NV, R - 1>(left, in, pairs, in_stride, panel, out, stride, cols, accumulate, bias);
  }
}

// Rows [0, rows) of one panel's product on the vector kernel, MR rows at a time (accumulators in
// three quarters of the 32 registers).
template <int NV>
void panel_on_vectors(const uint32_t* in, int64_t rows, int64_t pairs, int64_t in_stride,
                      const uint32_t* panel, float* out, int64_t stride, const Columns* cols,
                      bool accumulate, const float* bias) {
  constexpr int MR = 24 / NV;
  int64_t r = 0;
  for (; r + MR <= rows; r += MR)
    tile<MR, NV>(in + r * in_stride, pairs, in_stride, panel, out + r * stride, stride, cols,
                 accumulate, bias);
  rows_left<NV, MR - 1>(rows - r, in + r * in_stride, pairs, in_stride, panel, out + r * stride,
                        stride, cols, accumulate, bias);
}

// AMX: a tile is 16 rows of 64 bytes: 16 float32 columns of the product, or 16 bfloat16 pairs of
// an operand. Tiles 0-3 hold the product of two row blocks by two vectors, 4-5 the two row
// blocks of the input, 6-7 the two vectors of the panel.
constexpr int64_t kTileRows = 16, kTilePairs = 16;
// A tile product costs the same at 1 row as at 16; a single row takes the vector kernel (tiles:
// 0.88x-0.98x there, LSTM and GRU at T=100 B=1; 1.21x at B=2, 1.28x at B=4, 1.5x-2.2x at B=8).
constexpr int64_t kMinTileRows = 2;

// n rows padded to whole tiles' rows.
int64_t tile_rows(int64_t n) { return (n + kTileRows - 1) / kTileRows * kTileRows; }

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// One term of a product over rounded rows: `in` [rows][pairs] (pairs a whole number of tiles'
// depth on AMX, rows whole row blocks there), times one panel of bfloat16 pairs, NV * L wide.
struct Term {
  const uint32_t* in;
  int64_t pairs;
  const uint32_t* panel;
};

// The sum over `terms` of RB row blocks (from row r0) by VB vectors (from v0) of their products,
// each 16 x 16 float32, from tile t into results[t].
template <int NV, int RB, int VB>
void tile_products(const Term* terms, int count, int64_t r0, int v0,
                   float (*results)[kTileRows * L]) {
  _tile_zero(0);
  if constexpr (VB == 2) _tile_zero(1);
  if constexpr (RB == 2) _tile_zero(2);
  if constexpr (RB == 2 && VB == 2) _tile_zero(3);
  constexpr int64_t panel_bytes = NV * L * 4;
  for (int t = 0; t < count; ++t) {
    const int64_t pairs = terms[t].pairs, in_bytes = pairs * 4;
    const uint32_t* in = terms[t].in + r0 * pairs;
    for (int64_t j = 0; j < pairs; j += kTilePairs) {
      const uint32_t* w = terms[t].panel + j * NV * L + v0 * L;
      _tile_loadd(6, w, panel_bytes);
      if constexpr (VB == 2) _tile_loadd(7, w + L, panel_bytes);
      _tile_loadd(4, in + j, in_bytes);
      _tile_dpbf16ps(0, 4, 6);
      if constexpr (VB == 2) _tile_dpbf16ps(1, 4, 7);
      if constexpr (RB == 2) {
        _tile_loadd(5, in + kTileRows * pairs + j, in_bytes);
        _tile_dpbf16ps(2, 5, 6);
        if constexpr (VB == 2) _tile_dpbf16ps(3, 5, 7);
      }
    }
  }
  _tile_stored(0, results[0], L * 4);
  if constexpr (VB == 2) _tile_stored(1, results[1], L * 4);
  if constexpr (RB == 2) _tile_stored(2, results[2], L * 4);
  if constexpr (RB == 2 && VB == 2) _tile_stored(3, results[3], L * 4);
}

// Rows [0, rows) of one panel's product on AMX tiles, two row blocks by two vectors at a time
// (rows past `rows` in the last block are multiplied, and their results dropped).
template <int NV>
void panel_on_tiles(const Term* terms, int count, int64_t rows, float* out, int64_t stride,
                    const Columns* cols, bool accumulate, const float* bias) {
  alignas(64) float results[4][kTileRows * L];
  for (int v0 = 0; v0 < NV; v0 += 2) {
    const bool two_vectors = v0 + 1 < NV;
    for (int64_t r0 = 0; r0 < rows; r0 += 2 * kTileRows) {
      const bool two_blocks = r0 + kTileRows < rows;
      if (two_blocks && two_vectors)
        tile_products<NV, 2, 2>(terms, count, r0, v0, results);
      else if (two_blocks)
        tile_products<NV, 2, 1>(terms, count, r0, v0, results);
      else if (two_vectors)
        tile_products<NV, 1, 2>(terms, count, r0, v0, results);
      else
        tile_products<NV, 1, 1>(terms, count, r0, v0, results);
      // results[2 * b + v], from tile 2 * b + v: rows of block b, vector v0 + v.
      for (int b = 0; b < (two_blocks ? 2 : 1); ++b) {
        for (int v = 0; v < (two_vectors ? 2 : 1); ++v) {
          const Columns c = cols[v0 + v];
          if (c.lanes == 0) continue;
          const __mmask16 lanes = first_lanes(c.lanes);
          const __m512 start = bias ? _mm512_maskz_loadu_ps(lanes, bias + c.first)
                                    : _mm512_setzero_ps();
          const int64_t first_row = r0 + b * kTileRows;
          const int64_t block_rows = std::min(kTileRows, rows - first_row);
          for (int64_t r = 0; r < block_rows; ++r) {
            float* o = out + (first_row + r) * stride + c.first;
            __m512 sum = _mm512_add_ps(start, _mm512_load_ps(results[2 * b + v] + r * L));
            if (accumulate) sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(lanes, o));
            _mm512_mask_storeu_ps(o, lanes, sum);
          }
        }
      }
    }
  }
}

// A thread's rows rounded to bfloat16 pairs, one buffer a term, and the loop step they were
// rounded for (Product::step_id; 0: none, or only a chunk of its rows).
struct RoundedRows {
  std::vector<uint32_t> terms[2];
  uint64_t step_id = 0;
};

RoundedRows& thread_rounded_rows() {
  thread_local RoundedRows rounded;
  return rounded;
}

// Every row of the product for panels [begin, end): its terms' rows (in W, and the step's input
// projection where the loop computes it) rounded once for the step where they fit
// (kStepRowsBytes), else a chunk at a time, then each panel over them, on AMX tiles where the
// ISA has them and there are rows enough, else on vectors, one term after the other.
template <int NV>
void panels_as(const Product& product, int64_t begin, int64_t end) {
  struct Source {
    const float* rows;
    const Panels* panels;
    const uint32_t* packed;
  };
  Source sources[2];
  int count = 0;
  if (product.in)
    sources[count++] = {static_cast<const float*>(product.in), product.panels,
                        static_cast<const uint32_t*>(product.packed)};
  if (product.input)
    sources[count++] = {static_cast<const float*>(product.input), product.input_panels,
                        static_cast<const uint32_t*>(product.input_packed)};
  const Panels& panels = *product.panels;
  const int64_t stride = panels.gates * panels.hidden;
  const bool on_tiles = panels.isa == Isa::kAmx && product.rows >= kMinTileRows;
  const float* bias = static_cast<const float*>(product.bias);
  float* out = static_cast<float*>(product.out);
  int64_t all_pairs = 0;
  for (int t = 0; t < count; ++t) all_pairs += sources[t].panels->packed_depth() / 2;
  const bool whole_step =
      product.step_id != 0 && tile_rows(product.rows) * all_pairs * 4 <= kStepRowsBytes;
  // Whole pairs of row blocks; tiles read the last block whole.
  const int64_t chunk =
      whole_step ? product.rows
                 : std::max<int64_t>(2 * kTileRows, kChunkPairs / std::max<int64_t>(all_pairs, 1) /
                                                        (2 * kTileRows) * 2 * kTileRows);
  const int64_t most_rows = tile_rows(std::min(chunk, product.rows));
  // Each thread rounds every row it multiplies, the team's other threads the same rows: a copy of
  // them per thread, no barrier, and a few percent of the product's work.
  RoundedRows& rounded = thread_rounded_rows();
  const bool rounded_already = whole_step && rounded.step_id == product.step_id;
  rounded.step_id = whole_step ? product.step_id : 0;
  Term terms[2];
  for (int t = 0; t < count; ++t) {
    terms[t].pairs = sources[t].panels->packed_depth() / 2;
    std::vector<uint32_t>& buffer = rounded.terms[t];
    buffer.resize(std::max<size_t>(buffer.size(), size_t(most_rows * terms[t].pairs)));
    terms[t].in = buffer.data();
  }
  if (on_tiles) {
    TileConfig config;
    for (int t = 0; t < 8; ++t) config.bytes_per_row[t] = L * 4, config.rows[t] = kTileRows;
    _tile_loadconfig(&config);
  }
  for (int64_t first = 0; first < product.rows; first += chunk) {
    const int64_t rows = std::min(chunk, product.rows - first);
    const int64_t padded_rows = tile_rows(rows);
    for (int t = 0; t < count && !rounded_already; ++t) {
      const int64_t K = sources[t].panels->depth, pairs = terms[t].pairs;
      std::vector<uint32_t>& buffer = rounded.terms[t];
      round_rows(sources[t].rows + first * K, rows, K, pairs, buffer.data());
      std::fill(buffer.begin() + rows * pairs, buffer.begin() + padded_rows * pairs, 0u);
    }
    // GCC's tile loads are asm statements that do not say they read memory: the rows go there
    // before them.
    asm volatile("" ::: "memory");
    for (int64_t p = begin; p < end; ++p) {
      Columns cols[NV];
      for (int v = 0; v < NV; ++v) cols[v] = columns(panels, p, v);
      for (int t = 0; t < count; ++t)
        terms[t].panel = sources[t].packed + p * terms[t].pairs * NV * L;
      float* out_rows = out + first * stride;
      if (on_tiles) {
        panel_on_tiles<NV>(terms, count, rows, out_rows, stride, cols, product.accumulate, bias);
      } else if (count == 0) {  // bias (and what out holds) alone
        panel_on_vectors<NV>(nullptr, rows, 0, 0, nullptr, out_rows, stride, cols,
                             product.accumulate, bias);
      } else {  // the first term as asked, the second added to it
        for (int t = 0; t < count; ++t)
          panel_on_vectors<NV>(terms[t].in, rows, (sources[t].panels->depth + 1) / 2,
                               terms[t].pairs, terms[t].panel, out_rows, stride, cols,
                               t == 0 ? product.accumulate : true, t == 0 ? bias : nullptr);
      }
    }
  }
  // Hands the tiles' state back, so that the kernel need not save it at each context switch.
  if (on_tiles) _tile_release();
}

// A 16 x 16 block of float32 transposed in registers: v[i] holds row i on entry, column i on
// exit. Pairs of rows interleave as floats, then as pairs of floats (each 128-bit lane then holds
// four rows of one column), then lanes move across registers twice.
void transpose16(__m512 v[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(v[i], v[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(v[i], v[i + 1]);
  }
  const auto low_pairs = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  const auto high_pairs = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  for (int i = 0; i < 16; i += 4) {
    v[i] = low_pairs(t[i], t[i + 2]);
    v[i + 1] = high_pairs(t[i], t[i + 2]);
    v[i + 2] = low_pairs(t[i + 1], t[i + 3]);
    v[i + 3] = high_pairs(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 16; i += 8) {
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_f32x4(v[i + j], v[i + j + 4], 0x88);  // lanes 0, 2 of each
      t[i + j + 4] = _mm512_shuffle_f32x4(v[i + j], v[i + j + 4], 0xdd);  // lanes 1, 3
    }
  }
  for (int j = 0; j < 8; ++j) {
    v[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
    v[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
  }
}

}  // namespace

void round_transposed(const float* in, int64_t rows, int64_t cols, int64_t first_col,
                      int64_t last_col, void* out, float* sums) {
  constexpr int64_t kBlockRows = 2 * L;  // one 64-byte line of bfloat16 a column
  uint16_t* const columns = static_cast<uint16_t*>(out);
  if (sums) std::fill(sums + first_col, sums + last_col, 0.0f);
  for (int64_t r0 = 0; r0 < rows; r0 += kBlockRows) {
    const int64_t block_rows = std::min(kBlockRows, rows - r0);
    const __mmask32 row_lanes = block_rows == kBlockRows ? ~__mmask32(0)
                                                         : (__mmask32(1) << block_rows) - 1;
    for (int64_t n0 = first_col; n0 < last_col; n0 += L) {
      const int64_t block_cols = std::min(L, last_col - n0);
      const __mmask16 col_lanes = first_lanes(block_cols);
      __m512 low[L], high[L];  // rows r0 to r0 + 15, and the 16 after them
      for (int64_t i = 0; i < L; ++i) {
        const float* row = in + (r0 + i) * cols + n0;
        low[i] = i < block_rows ? _mm512_maskz_loadu_ps(col_lanes, row) : _mm512_setzero_ps();
        high[i] = L + i < block_rows ? _mm512_maskz_loadu_ps(col_lanes, row + L * cols)
                                     : _mm512_setzero_ps();
      }
      if (sums) {  // the block's rows added up, lane l for column n0 + l
        __m512 sum = _mm512_maskz_loadu_ps(col_lanes, sums + n0);
        for (int64_t i = 0; i < L; ++i) sum = _mm512_add_ps(sum, _mm512_add_ps(low[i], high[i]));
        _mm512_mask_storeu_ps(sums + n0, col_lanes, sum);
      }
      transpose16(low);
      transpose16(high);
      for (int64_t j = 0; j < block_cols; ++j) {
        const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(high[j], low[j]);
        _mm512_mask_storeu_epi16(columns + (n0 + j) * rows + r0, row_lanes, both);
      }
    }
  }
}

void pack(const Panels& panels, const float* w, bool transposed, void* packed) {
  const int64_t K = panels.depth, pairs = panels.packed_depth() / 2;
  const int64_t N = panels.gates * panels.hidden, width = panels.vectors() * L;
  // Transposed: the L rows of w that a vector's columns are, each rounded to pairs, then
  // transposed 16 pairs at a time. Else two rows of W at a time, rounded, their bfloat16
  // interleaved into pairs: element 2l of the result is element l of the first row, 2l + 1 of the
  // second (elements 16 + l of what the rounding gives).
  std::vector<uint32_t> w_rows(transposed ? L * pairs : 0);
  alignas(64) static constexpr uint16_t kInterleave[2 * L] = {
      0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
      8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i interleave = _mm512_load_si512(kInterleave);
  for (int64_t p = 0; p < panels.count; ++p) {
    for (int64_t v = 0; v < panels.vectors(); ++v) {
      const Columns c = columns(panels, p, v);
      // dst[j * width + l] = (W[2j, c.first + l], W[2j + 1, c.first + l]), zero past K and H
      uint32_t* dst = static_cast<uint32_t*>(packed) + p * pairs * width + v * L;
      if (transposed) {  // row n of w is column n of W
        for (int64_t l = 0; l < L; ++l) {
          uint32_t* row = w_rows.data() + l * pairs;
          if (l < c.lanes) round_rows(w + (c.first + l) * K, 1, K, pairs, row);
          else std::fill(row, row + pairs, 0u);
        }
        for (int64_t j0 = 0; j0 < pairs; j0 += L) {
          const __mmask16 depth = first_lanes(pairs - j0);
          __m512 block[L];
          for (int64_t l = 0; l < L; ++l)
            block[l] = _mm512_castsi512_ps(
                _mm512_maskz_loadu_epi32(depth, w_rows.data() + l * pairs + j0));
          transpose16(block);
          for (int64_t j = 0; j < std::min(L, pairs - j0); ++j)
            _mm512_storeu_si512(dst + (j0 + j) * width, _mm512_castps_si512(block[j]));
        }
        continue;
      }
      const __mmask16 lanes = first_lanes(c.lanes);
      const auto row_of_w = [&](int64_t k) {
        return k < K ? _mm512_maskz_loadu_ps(lanes, w + k * N + c.first) : _mm512_setzero_ps();
      };
      for (int64_t j = 0; j < pairs; ++j) {
        const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(row_of_w(2 * j + 1), row_of_w(2 * j));
        _mm512_storeu_si512(dst + j * width, _mm512_permutexvar_epi16(interleave, both));
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
