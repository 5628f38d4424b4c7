// One element (batch row b, hidden unit j) of each per-step kernel: load, gate math, store.
// Overloaded on the step's argument struct; T is the storage type, A the arithmetic type.
// The CPU loops and the CUDA kernels both call exactly these functions.
#pragma once

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#include "gates.h"
#include "steps.h"

namespace fusedrnn {
inline namespace FUSEDRNN_ISA {  // gates.h

template <typename T> struct AccumulateType { using type = float; };
template <> struct AccumulateType<double> { using type = double; };

// Loads and stores between storage type T and arithmetic type A, through pointers so that a
// vector type A can load and store several lanes at once (cpu/vectorized_steps.h). torch builds
// CUDA code with the implicit __half/__nv_bfloat16 conversions switched off, hence the
// explicit intrinsics.
template <typename A, typename T> FUSEDRNN_HD A load(const T* p) { return static_cast<A>(*p); }
template <typename T, typename A> FUSEDRNN_HD void store(T* p, A x) { *p = static_cast<T>(x); }
#if defined(__CUDACC__)
template <> FUSEDRNN_HD float load<float, __half>(const __half* p) { return __half2float(*p); }
template <> FUSEDRNN_HD float load<float, __nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}
template <> FUSEDRNN_HD void store<__half, float>(__half* p, float x) { *p = __float2half_rn(x); }
template <> FUSEDRNN_HD void store<__nv_bfloat16, float>(__nv_bfloat16* p, float x) {
  *p = __float2bfloat16_rn(x);
}
#endif

template <typename T, typename A>
FUSEDRNN_HD void element(const LSTMForwardStep& s, int64_t b, int64_t j) {
  const int64_t H = s.hidden, k = b * H + j;
  T* g = static_cast<T*>(s.gates) + b * 4 * H;
  const auto r = gates::lstm_forward<A>(
      load<A>(g + j), load<A>(g + H + j), load<A>(g + 2 * H + j), load<A>(g + 3 * H + j),
      load<A>(static_cast<const T*>(s.c_prev) + k));
  store(static_cast<T*>(s.c) + k, r.c);
  store(static_cast<T*>(s.h) + k, r.h);
  if (s.save_gates) {
    store(g + j, r.i);
    store(g + H + j, r.f);
    store(g + 2 * H + j, r.g);
    store(g + 3 * H + j, r.o);
  }
}

template <typename T, typename A>
FUSEDRNN_HD void element(const LSTMBackwardStep& s, int64_t b, int64_t j) {
  const int64_t H = s.hidden, k = b * H + j;
  const T* g = static_cast<const T*>(s.gates) + b * 4 * H;
  A dh = load<A>(static_cast<const T*>(s.dh) + k);
  if (s.dy) dh = dh + load<A>(static_cast<const T*>(s.dy) + k);
  T* dc = static_cast<T*>(s.dc);
  const auto r = gates::lstm_backward<A>(
      load<A>(g + j), load<A>(g + H + j), load<A>(g + 2 * H + j), load<A>(g + 3 * H + j),
      load<A>(static_cast<const T*>(s.c) + k), load<A>(static_cast<const T*>(s.c_prev) + k), dh,
      load<A>(dc + k));
  T* dg = static_cast<T*>(s.dgates) + b * 4 * H;
  store(dg + j, r.d_i);
  store(dg + H + j, r.d_f);
  store(dg + 2 * H + j, r.d_g);
  store(dg + 3 * H + j, r.d_o);
  store(dc + k, r.d_c_prev);
}

template <typename T, typename A>
FUSEDRNN_HD void element(const GRUForwardStep& s, int64_t b, int64_t j) {
  const int64_t H = s.hidden, k = b * H + j;
  const T* xg = static_cast<const T*>(s.xg) + b * 3 * H;
  const T* hg = static_cast<const T*>(s.hg) + b * 3 * H;
  const T* bias = static_cast<const T*>(s.b_hh);
  A hr = load<A>(hg + j), hz = load<A>(hg + H + j), hn = load<A>(hg + 2 * H + j);
  if (bias) {
    hr = hr + load<A>(bias + j);
    hz = hz + load<A>(bias + H + j);
    hn = hn + load<A>(bias + 2 * H + j);
  }
  const auto r = gates::gru_forward<A>(load<A>(xg + j), load<A>(xg + H + j),
                                       load<A>(xg + 2 * H + j), hr, hz, hn,
                                       load<A>(static_cast<const T*>(s.h_prev) + k));
  store(static_cast<T*>(s.h) + k, r.h);
  if (s.saved) {
    T* saved = static_cast<T*>(s.saved) + b * 4 * H;
    store(saved + j, r.r);
    store(saved + H + j, r.z);
    store(saved + 2 * H + j, r.n);
    store(saved + 3 * H + j, hn);
  }
}

template <typename T, typename A>
FUSEDRNN_HD void element(const GRUBackwardStep& s, int64_t b, int64_t j) {
  const int64_t H = s.hidden, k = b * H + j;
  const T* saved = static_cast<const T*>(s.saved) + b * 4 * H;
  T* dh = static_cast<T*>(s.dh);
  A dh_total = load<A>(dh + k);
  if (s.dy) dh_total = dh_total + load<A>(static_cast<const T*>(s.dy) + k);
  const auto r = gates::gru_backward<A>(
      load<A>(saved + j), load<A>(saved + H + j), load<A>(saved + 2 * H + j),
      load<A>(saved + 3 * H + j), load<A>(static_cast<const T*>(s.h_prev) + k), dh_total);
  T* dxg = static_cast<T*>(s.dxg) + b * 3 * H;
  T* dhg = static_cast<T*>(s.dhg) + b * 3 * H;
  store(dxg + j, r.d_r);
  store(dhg + j, r.d_r);
  store(dxg + H + j, r.d_z);
  store(dhg + H + j, r.d_z);
  store(dxg + 2 * H + j, r.d_n);
  store(dhg + 2 * H + j, r.d_hn);
  store(dh + k, r.d_h_prev);
}

template <typename T, typename A>
FUSEDRNN_HD void element(const RNNForwardStep& s, int64_t b, int64_t j) {
  T* h = static_cast<T*>(s.h) + b * s.hidden + j;
  store(h, gates::rnn_forward<A>(load<A>(h), s.relu));
}

template <typename T, typename A>
FUSEDRNN_HD void element(const RNNBackwardStep& s, int64_t b, int64_t j) {
  const int64_t k = b * s.hidden + j;
  A dh = load<A>(static_cast<const T*>(s.dh) + k);
  if (s.dy) dh = dh + load<A>(static_cast<const T*>(s.dy) + k);
  const A h = load<A>(static_cast<const T*>(s.h) + k);
  store(static_cast<T*>(s.dpre) + k, gates::rnn_backward<A>(h, dh, s.relu));
}

}  // namespace FUSEDRNN_ISA
}  // namespace fusedrnn
