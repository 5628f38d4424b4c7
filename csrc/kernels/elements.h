// One element (batch row b, hidden unit j) of each per-step kernel: load, gate math, store.
// Overloaded on the step's argument struct; T is the storage type, A the arithmetic type.
// The CPU loops and the CUDA kernels both call exactly these functions.
#pragma once

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#include "gates.h"
#include "pointwise.h"

namespace fusedrnn {

template <typename T> struct AccumulateType { using type = float; };
template <> struct AccumulateType<double> { using type = double; };

// Conversions between storage and arithmetic types. torch builds CUDA code with the implicit
// __half/__nv_bfloat16 conversions switched off, hence the explicit intrinsics.
template <typename A, typename T> FUSEDRNN_HD A load(T x) { return static_cast<A>(x); }
template <typename T, typename A> FUSEDRNN_HD T store(A x) { return static_cast<T>(x); }
#if defined(__CUDACC__)
template <> FUSEDRNN_HD float load<float, __half>(__half x) { return __half2float(x); }
template <> FUSEDRNN_HD float load<float, __nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <> FUSEDRNN_HD __half store<__half, float>(float x) { return __float2half_rn(x); }
template <> FUSEDRNN_HD __nv_bfloat16 store<__nv_bfloat16, float>(float x) {
  return __float2bfloat16_rn(x);
}
#endif

template <typename T, typename A>
FUSEDRNN_HD void element(const LSTMForwardStep& s, int64_t b, int64_t j) {
  const int64_t H = s.hidden, k = b * H + j;
  T* g = static_cast<T*>(s.gates) + b * 4 * H;
  const auto r = gates::lstm_forward<A>(
      load<A>(g[j]), load<A>(g[H + j]), load<A>(g[2 * H + j]), load<A>(g[3 * H + j]),
      load<A>(static_cast<const T*>(s.c_prev)[k]));
  static_cast<T*>(s.c)[k] = store<T>(r.c);
  static_cast<T*>(s.h)[k] = store<T>(r.h);
  if (s.save_gates) {
    g[j] = store<T>(r.i);
    g[H + j] = store<T>(r.f);
    g[2 * H + j] = store<T>(r.g);
    g[3 * H + j] = store<T>(r.o);
  }
}

template <typename T, typename A>
FUSEDRNN_HD void element(const LSTMBackwardStep& s, int64_t b, int64_t j) {
  const int64_t H = s.hidden, k = b * H + j;
  const T* g = static_cast<const T*>(s.gates) + b * 4 * H;
  A dh = load<A>(static_cast<const T*>(s.dh)[k]);
  if (s.dy) dh += load<A>(static_cast<const T*>(s.dy)[k]);
  T* dc = static_cast<T*>(s.dc);
  const auto r = gates::lstm_backward<A>(
      load<A>(g[j]), load<A>(g[H + j]), load<A>(g[2 * H + j]), load<A>(g[3 * H + j]),
      load<A>(static_cast<const T*>(s.c)[k]), load<A>(static_cast<const T*>(s.c_prev)[k]), dh,
      load<A>(dc[k]));
  T* dg = static_cast<T*>(s.dgates) + b * 4 * H;
  dg[j] = store<T>(r.d_i);
  dg[H + j] = store<T>(r.d_f);
  dg[2 * H + j] = store<T>(r.d_g);
  dg[3 * H + j] = store<T>(r.d_o);
  dc[k] = store<T>(r.d_c_prev);
}

template <typename T, typename A>
FUSEDRNN_HD void element(const GRUForwardStep& s, int64_t b, int64_t j) {
  const int64_t H = s.hidden, k = b * H + j;
  const T* xg = static_cast<const T*>(s.xg) + b * 3 * H;
  const T* hg = static_cast<const T*>(s.hg) + b * 3 * H;
  const T* bias = static_cast<const T*>(s.b_hh);
  A hr = load<A>(hg[j]), hz = load<A>(hg[H + j]), hn = load<A>(hg[2 * H + j]);
  if (bias) {
    hr += load<A>(bias[j]);
    hz += load<A>(bias[H + j]);
    hn += load<A>(bias[2 * H + j]);
  }
  const auto r = gates::gru_forward<A>(load<A>(xg[j]), load<A>(xg[H + j]), load<A>(xg[2 * H + j]),
                                       hr, hz, hn, load<A>(static_cast<const T*>(s.h_prev)[k]));
  static_cast<T*>(s.h)[k] = store<T>(r.h);
  if (s.saved) {
    T* saved = static_cast<T*>(s.saved) + b * 4 * H;
    saved[j] = store<T>(r.r);
    saved[H + j] = store<T>(r.z);
    saved[2 * H + j] = store<T>(r.n);
    saved[3 * H + j] = store<T>(hn);
  }
}

template <typename T, typename A>
FUSEDRNN_HD void element(const GRUBackwardStep& s, int64_t b, int64_t j) {
  const int64_t H = s.hidden, k = b * H + j;
  const T* saved = static_cast<const T*>(s.saved) + b * 4 * H;
  T* dh = static_cast<T*>(s.dh);
  A dh_total = load<A>(dh[k]);
  if (s.dy) dh_total += load<A>(static_cast<const T*>(s.dy)[k]);
  const auto r = gates::gru_backward<A>(
      load<A>(saved[j]), load<A>(saved[H + j]), load<A>(saved[2 * H + j]),
      load<A>(saved[3 * H + j]), load<A>(static_cast<const T*>(s.h_prev)[k]), dh_total);
  T* dxg = static_cast<T*>(s.dxg) + b * 3 * H;
  T* dhg = static_cast<T*>(s.dhg) + b * 3 * H;
  dxg[j] = dhg[j] = store<T>(r.d_r);
  dxg[H + j] = dhg[H + j] = store<T>(r.d_z);
  dxg[2 * H + j] = store<T>(r.d_n);
  dhg[2 * H + j] = store<T>(r.d_hn);
  dh[k] = store<T>(r.d_h_prev);
}

template <typename T, typename A>
FUSEDRNN_HD void element(const RNNForwardStep& s, int64_t b, int64_t j) {
  T* h = static_cast<T*>(s.h) + b * s.hidden + j;
  *h = store<T>(gates::rnn_forward<A>(load<A>(*h), s.relu));
}

template <typename T, typename A>
FUSEDRNN_HD void element(const RNNBackwardStep& s, int64_t b, int64_t j) {
  const int64_t k = b * s.hidden + j;
  A dh = load<A>(static_cast<const T*>(s.dh)[k]);
  if (s.dy) dh += load<A>(static_cast<const T*>(s.dy)[k]);
  static_cast<T*>(s.dpre)[k] =
      store<T>(gates::rnn_backward<A>(load<A>(static_cast<const T*>(s.h)[k]), dh, s.relu));
}

}  // namespace fusedrnn
