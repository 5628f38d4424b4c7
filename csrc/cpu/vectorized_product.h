// The product of the fused CPU recurrence (recurrence.h): packing, and the register-blocked
// kernel that multiplies a few rows of the input by one panel of the weights. Written once,
// compiled once per ISA: included only by cpu/kernels_<isa>.cpp, after that ISA's target header,
// with FUSEDRNN_ISA naming its namespace and FUSEDRNN_VECTOR_REGISTERS its register count.
#pragma once

#include <algorithm>
#include <type_traits>

#include <ATen/cpu/vec/functional_base.h>

#include "recurrence.h"

namespace fusedrnn::cpu::FUSEDRNN_ISA {

using at::vec::Vectorized;

template <typename T> constexpr int64_t kLanes = Vectorized<T>::size();  // one vector

int64_t lanes_of(Dtype dtype) {
  return dtype == Dtype::kFloat64 ? kLanes<double> : kLanes<float>;
}

Panels panels_for(Isa isa, Dtype dtype, int64_t gates, int64_t hidden, int64_t depth) {
  const int64_t lanes = lanes_of(dtype);
  const bool bf16 = dtype == Dtype::kBFloat16 && isa >= Isa::kAvx512Bf16;
  // Four vectors a panel where the gates allow (a single-gate output takes four unit blocks),
  // so that each loaded input element feeds several independent FMAs. A single-gate output
  // narrower than two such panels takes fewer blocks a panel, down to one, so that a loop's two
  // threads have a panel each: at H=32 the backward's product onto h was one panel, and its
  // loop ran on one thread while the other waited. bfloat16 panels keep four: their product
  // (kernels_avx512_bf16.cpp) takes three or four vectors a panel.
  int64_t blocks = gates >= 3 ? 1 : 4;
  while (!bf16 && blocks > 1 && hidden <= blocks * lanes) blocks /= 2;
  const int64_t units = blocks * lanes;
  return Panels{isa, gates, hidden, depth, lanes, blocks, (hidden + units - 1) / units, bf16};
}

// w: [N, K] when transposed (W = w^T), else [K, N].
template <typename T>
void pack_as(const Panels& panels, const T* w, bool transposed, T* packed) {
  constexpr int64_t L = kLanes<T>;
  const int64_t K = panels.depth, N = panels.gates * panels.hidden, width = panels.vectors() * L;
  for (int64_t p = 0; p < panels.count; ++p) {
    for (int64_t v = 0; v < panels.vectors(); ++v) {
      const Columns c = columns(panels, p, v);
      T* dst = packed + p * K * width + v * L;  // dst[k * width + l] = W[k, c.first + l]
      for (int64_t k = 0; c.lanes < L && k < K; ++k)
        std::fill(dst + k * width + c.lanes, dst + k * width + L, T(0));
      if (!transposed) {
        for (int64_t k = 0; k < K; ++k) std::copy_n(w + k * N + c.first, c.lanes, dst + k * width);
        continue;
      }
      const T* src = w + c.first * K;  // src[l * K + k] = W[k, c.first + l]
      int64_t k = 0;
      for (; c.lanes == L && k + L <= K; k += L)
        at::vec::transpose_mxn<T, L, L>(src + k, K, dst + k * width, width);
      at::vec::transpose_mxn<T>(src + k, K, dst + k * width, width, int(c.lanes), int(K - k));
    }
  }
}

// One term of a tile's sum: rows of `in`, K apart, times one panel of packed weights.
template <typename T>
struct Operand {
  const T* in;
  int64_t K;
  const T* panel;
};

// out[r, columns of v] (+)= bias[columns of v] + the sum over the operands and their k of
// in[r, k] panel[k, v], for MR rows and the NV vectors of one panel, in MR * NV accumulators
// (bias: none when null). With fewer than eight, consecutive k alternate between two sets of
// accumulators, so that the FMAs' latency hides behind independent work.
template <typename T, int MR, int NV>
void tile(const Operand<T>* operands, int count, T* out, int64_t out_stride, const Columns* cols,
          bool accumulate, const T* bias) {
  using Vec = Vectorized<T>;
  constexpr int L = Vec::size(), S = MR * NV < 8 ? 2 : 1;
  // The rows of out this tile adds to (a step's input projection, written for the whole sequence
  // before the loop and so no longer in the cache), requested now so that they arrive while the
  // k loop runs: waiting for them after it was a fifth of the tile's time (LSTM T=48 B=32 H=128).
  if (accumulate) {
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v)
        __builtin_prefetch(out + r * out_stride + cols[v].first, 1);
  }
  Vec start[NV];
  for (int v = 0; v < NV; ++v)
    start[v] = bias && cols[v].lanes > 0 ? Vec::loadu(bias + cols[v].first, cols[v].lanes)
                                         : Vec(T(0));
  // Every loop over the tile's rows and vectors unrolled, so that the accumulators live in
  // registers: GCC left the row loop of the 24-row, one-vector tile (AVX-512's single-gate
  // products at H <= 32) rolled, its accumulators in memory, and the tile took 1.7x-1.9x its
  // time now (tests/cpu/test_codegen.py).
  Vec acc[S][MR][NV];
  for (int s = 0; s < S; ++s)
#pragma GCC unroll 32
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[s][r][v] = s == 0 ? start[v] : Vec(T(0));
  for (int o = 0; o < count; ++o) {
    const T* in = operands[o].in;
    const T* panel = operands[o].panel;
    const int64_t K = operands[o].K;
    const auto accumulate_k = [&](int s, int64_t k) {
      Vec w[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) w[v] = Vec::loadu(panel + k * NV * L + v * L);
#pragma GCC unroll 32
      for (int r = 0; r < MR; ++r) {
        const Vec x(in[r * K + k]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[s][r][v] = at::vec::fmadd(x, w[v], acc[s][r][v]);
      }
    };
    int64_t k = 0;
    for (; k + S <= K; k += S)
      for (int s = 0; s < S; ++s) accumulate_k(s, k + s);
    for (; k < K; ++k) accumulate_k(0, k);
  }
#pragma GCC unroll 32
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      Vec sum = acc[0][r][v];
      if constexpr (S == 2) sum = sum + acc[1][r][v];
      T* o = out + r * out_stride + cols[v].first;
      if (cols[v].lanes == L) {
        if (accumulate) sum = sum + Vec::loadu(o);
        sum.store(o);
      } else if (cols[v].lanes > 0) {
        if (accumulate) sum = sum + Vec::loadu(o, cols[v].lanes);
        sum.store(o, cols[v].lanes);
      }
    }
  }
}

// The `left` rows after the last whole tile (fewer than R + 1), as one tile.
template <typename T, int NV, int R>
void rows_left(int64_t left, const Operand<T>* operands, int count, T* out, int64_t stride,
               const Columns* cols, bool accumulate, const T* bias) {
  if constexpr (R > 0) {
    if (left == R) return tile<T, R, NV>(operands, count, out, stride, cols, accumulate, bias);
    rows_left<T, NV, R - 1>(left, operands, count, out, stride, cols, accumulate, bias);
  }
}

// Every row of the product for panels [begin, end): MR rows at a time, the rest in one tile.
template <typename T, int NV>
void panels_as(const Product& product, int64_t begin, int64_t end) {
  // Accumulators in three quarters of the vector registers (12 of AVX2's 16, 24 of AVX-512's
  // 32), the rest for the weights and the broadcast inputs.
  constexpr int MR = FUSEDRNN_VECTOR_REGISTERS * 3 / 4 / NV;
  const Panels& panels = *product.panels;
  const int64_t stride = panels.gates * panels.hidden;
  const T* bias = static_cast<const T*>(product.bias);
  T* out = static_cast<T*>(product.out);
  // The step's input projection first where the loop computes it, then the recurrent product:
  // each operand's first row and its first panel.
  Operand<T> first[2];
  int count = 0;
  if (product.input) {
    first[count++] = {static_cast<const T*>(product.input), product.input_panels->depth,
                      static_cast<const T*>(product.input_packed)};
  }
  if (product.in) {
    first[count++] = {static_cast<const T*>(product.in), panels.depth,
                      static_cast<const T*>(product.packed)};
  }
  for (int64_t p = begin; p < end; ++p) {
    Columns cols[NV];
    for (int v = 0; v < NV; ++v) cols[v] = columns(panels, p, v);
    Operand<T> operands[2];
    const auto at_row = [&](int64_t r) {  // the operands for rows from r, on panel p
      for (int o = 0; o < count; ++o) {
        const int64_t K = first[o].K;
        operands[o] = {first[o].in + r * K, K, first[o].panel + p * K * NV * panels.lanes};
      }
      return operands;
    };
    int64_t r = 0;
    for (; r + MR <= product.rows; r += MR)
      tile<T, MR, NV>(at_row(r), count, out + r * stride, stride, cols, product.accumulate, bias);
    // The rows left, in one tile: one row at a time runs at half the speed.
    rows_left<T, NV, MR - 1>(product.rows - r, at_row(r), count, out + r * stride, stride, cols,
                             product.accumulate, bias);
  }
}

template <typename T>
void panels_of(const Product& product, int64_t begin, int64_t end) {
  switch (product.panels->vectors()) {
    case 1: return panels_as<T, 1>(product, begin, end);
    case 2: return panels_as<T, 2>(product, begin, end);
    case 3: return panels_as<T, 3>(product, begin, end);
    default: return panels_as<T, 4>(product, begin, end);
  }
}

// MR rows of out, columns [n, n + NC), (+)= in w^T for w [N, K]: dot products along k, each
// loaded vector of w feeding MR accumulators and each of in NC. Inlined into its loop over
// columns, which then sets up the tail's masks once (a call per tile cost a fifth at one row).
// With `ahead`, it also requests each line of its columns of w that far on, into L2.
template <typename T, int MR, int NC>
__attribute__((always_inline)) inline void dot_tile(const SmallProduct& p, const T* in, int64_t n,
                                                    T* out, int64_t ahead) {
  using Vec = Vectorized<T>;
  constexpr int L = Vec::size();
  const T* w = static_cast<const T*>(p.w) + n * p.K;
  const int64_t K = p.K, whole = K - K % L;
  Vec acc[MR][NC];
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NC; ++c) acc[r][c] = Vec(T(0));
  const auto add = [&](int64_t k, int64_t count) {
    Vec y[NC];
    for (int c = 0; c < NC; ++c)
      y[c] = count == L ? Vec::loadu(w + c * K + k) : Vec::loadu(w + c * K + k, count);
    for (int r = 0; r < MR; ++r) {
      const Vec x = count == L ? Vec::loadu(in + r * K + k) : Vec::loadu(in + r * K + k, count);
      for (int c = 0; c < NC; ++c) acc[r][c] = at::vec::fmadd(x, y[c], acc[r][c]);
    }
  };
  if (ahead == 0) {
    for (int64_t k = 0; k < whole; k += L) add(k, L);
  } else {
    constexpr int64_t kLine = 64 / sizeof(T);
    for (int64_t k = 0; k < whole; k += L) {
      if (k % kLine == 0)
        for (int c = 0; c < NC; ++c) __builtin_prefetch(w + c * K + k + ahead, 0, 2);
      add(k, L);
    }
  }
  if (whole < K) add(whole, K - whole);
  // Each sum across lanes by shuffles (float; double stores and adds): one scalar add chain per
  // column cost 16 add latencies, most of a single step's time.
  const auto sum = [](const Vec& a, const Vec& b) { return a + b; };
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NC; ++c) {
      const T total = at::vec::vec_reduce_all<T>(sum, acc[r][c]);
      T& o = out[r * p.N + n + c];
      o = p.accumulate ? o + total : total;
    }
}

// Tiles of 4 rows by NC columns fill three quarters of the vector registers with accumulators;
// with one or two rows, tiles of four columns.
constexpr int kDotRows = 4, kDotColumns = FUSEDRNN_VECTOR_REGISTERS * 3 / 4 / kDotRows;

// Rows [0, MR) of out, columns [begin, end), (+)= in w^T, w [N, K], a tile at a time.
template <typename T, int MR>
void rows_transposed(const SmallProduct& p, const T* in, T* out, int64_t begin, int64_t end,
                     int64_t ahead) {
  constexpr int C = MR <= 2 ? 4 : kDotColumns;
  int64_t n = begin;
  for (; n + C <= end; n += C) dot_tile<T, MR, C>(p, in, n, out, ahead);
  for (; n < end; ++n) dot_tile<T, MR, 1>(p, in, n, out, ahead);
}

// Columns [begin, end) of out (+)= in w^T: a block of columns at a time, and within it every
// block of rows, so that the block's rows of w stay in L1 while the input's pass. Where this
// call's share of w outgrows L2 (so it comes from L3 or memory on every call), each block's
// first rows also request the next block: many short streams of w, one per column, which the
// hardware's prefetchers did not follow (LSTM T=1 B=16 H=512: 1.04x-1.24x from L3, 1.10x after
// another model's call). Below that size the requests only cost.
template <typename T>
void small_product_transposed(const SmallProduct& p) {
  // Whole tiles of 4 and of kDotColumns columns fit a block of kUnit.
  constexpr int64_t kBlockBytes = 16 << 10, kUnit = 4 * kDotColumns;
  const int64_t block = std::max(kUnit, kBlockBytes / int64_t(sizeof(T)) / p.K / kUnit * kUnit);
  const T* in = static_cast<const T*>(p.in);
  T* out = static_cast<T*>(p.out);
  const bool stream = (p.end - p.begin) * p.K * int64_t(sizeof(T)) > l2_cache_bytes();
  for (int64_t n = p.begin; n < p.end; n += block) {
    const int64_t end = std::min(p.end, n + block);
    int64_t ahead = stream && end < p.end ? block * p.K : 0;
    int64_t r = 0;
    for (; r + kDotRows <= p.M; r += kDotRows, ahead = 0)
      rows_transposed<T, kDotRows>(p, in + r * p.K, out + r * p.N, n, end, ahead);
    switch (p.M - r) {
      case 3: rows_transposed<T, 3>(p, in + r * p.K, out + r * p.N, n, end, ahead); break;
      case 2: rows_transposed<T, 2>(p, in + r * p.K, out + r * p.N, n, end, ahead); break;
      case 1: rows_transposed<T, 1>(p, in + r * p.K, out + r * p.N, n, end, ahead); break;
    }
  }
}

// Rows [0, M) of out, columns [begin, end), (+)= in w, w [K, N]: two vectors of columns at a
// time, each k's row of w scaled by every row's input element.
template <typename T, int M>
void small_rows_plain(const SmallProduct& p, const T* in, const T* w, T* out) {
  using Vec = Vectorized<T>;
  constexpr int L = Vec::size(), NV = 2;
  for (int64_t n = p.begin; n < p.end; n += NV * L) {
    int64_t count[NV];
    for (int v = 0; v < NV; ++v) count[v] = std::clamp<int64_t>(p.end - n - v * L, 0, L);
    Vec acc[M][NV];
    for (int r = 0; r < M; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = Vec(T(0));
    for (int64_t k = 0; k < p.K; ++k) {
      Vec y[NV];
      for (int v = 0; v < NV; ++v)
        y[v] = count[v] == L ? Vec::loadu(w + k * p.N + n + v * L)
                             : Vec::loadu(w + k * p.N + n + v * L, count[v]);
      for (int r = 0; r < M; ++r) {
        const Vec x(in[r * p.K + k]);
        for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(x, y[v], acc[r][v]);
      }
    }
    for (int r = 0; r < M; ++r)
      for (int v = 0; v < NV; ++v) {
        T* o = out + r * p.N + n + v * L;
        if (count[v] == L) {
          (p.accumulate ? acc[r][v] + Vec::loadu(o) : acc[r][v]).store(o);
        } else if (count[v] > 0) {
          (p.accumulate ? acc[r][v] + Vec::loadu(o, count[v]) : acc[r][v]).store(o, count[v]);
        }
      }
  }
}

template <typename T>
void small_product_as(const SmallProduct& p) {
  if (p.transposed) return small_product_transposed<T>(p);
  const T* in = static_cast<const T*>(p.in);
  const T* w = static_cast<const T*>(p.w);
  T* out = static_cast<T*>(p.out);
  for (int64_t r = 0; r < p.M;) {
    const int64_t rows = std::min<int64_t>(p.M - r, 4);
    const T* in_rows = in + r * p.K;
    T* out_rows = out + r * p.N;
    const auto run = [&](auto m) {
      small_rows_plain<T, decltype(m)::value>(p, in_rows, w, out_rows);
    };
    switch (rows) {
      case 4: run(std::integral_constant<int, 4>{}); break;
      case 3: run(std::integral_constant<int, 3>{}); break;
      case 2: run(std::integral_constant<int, 2>{}); break;
      default: run(std::integral_constant<int, 1>{}); break;
    }
    r += rows;
  }
}

void small_product(Dtype dtype, const SmallProduct& product) {
  if (dtype == Dtype::kFloat64) return small_product_as<double>(product);
  small_product_as<float>(product);
}

void product_panels(Dtype dtype, const Product& product, int64_t begin, int64_t end) {
  if (dtype == Dtype::kFloat64) return panels_of<double>(product, begin, end);
  return panels_of<float>(product, begin, end);
}

void pack(Dtype dtype, const Panels& panels, const void* w, bool transposed, void* packed) {
  if (dtype == Dtype::kFloat64)
    return pack_as(panels, static_cast<const double*>(w), transposed, static_cast<double*>(packed));
  pack_as(panels, static_cast<const float*>(w), transposed, static_cast<float*>(packed));
}

}  // namespace fusedrnn::cpu::FUSEDRNN_ISA
