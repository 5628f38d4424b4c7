// Gate math of every cell, forward and derivative, for one hidden unit of one batch row.
// Shared by the CPU loops (cpu/steps.cpp, cpu/vectorized_steps.h) and the CUDA kernels
// (cuda/steps.cu), so the CPU tests exercise the arithmetic the GPU runs. Everything here works
// in the accumulation type A (float for float/half/bfloat16 storage, double for double).
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define FUSEDRNN_HD __host__ __device__ __forceinline__
#else
#define FUSEDRNN_HD inline
#endif

// Each compilation of this code lives in a namespace of its own: `base` by default, the ISA's
// in the CPU vector kernels (cpu/isa.h), so that a copy compiled for AVX2 is never the one a
// baseline caller links to.
#ifndef FUSEDRNN_ISA
#define FUSEDRNN_ISA base
#endif

namespace fusedrnn {
inline namespace FUSEDRNN_ISA {
namespace gates {

FUSEDRNN_HD float exp_(float x) { return ::expf(x); }
FUSEDRNN_HD double exp_(double x) { return ::exp(x); }
FUSEDRNN_HD float tanh_(float x) { return ::tanhf(x); }
FUSEDRNN_HD double tanh_(double x) { return ::tanh(x); }

template <typename A> FUSEDRNN_HD A sigmoid(A x) { return A(1) / (A(1) + exp_(-x)); }

// Derivatives written in terms of the activation's output, which is what the forward saves.
template <typename A> FUSEDRNN_HD A d_sigmoid(A s) { return s * (A(1) - s); }
template <typename A> FUSEDRNN_HD A d_tanh(A t) { return A(1) - t * t; }

// Written so that NaN passes through, as in torch.relu.
template <typename A> FUSEDRNN_HD A relu(A x) { return x < A(0) ? A(0) : x; }
// The gradient of relu's input from its output y and output gradient dy, as torch's
// threshold_backward: 0 where y <= 0 (0 at 0, and 0 rather than 0 * inf), dy elsewhere, NaN
// outputs included.
template <typename A> FUSEDRNN_HD A relu_backward(A y, A dy) { return y <= A(0) ? A(0) : dy; }

// ---- LSTM (gate order i, f, g, o, as torch.nn) -------------------------------------------
template <typename A> struct LSTMForward {
  A i, f, g, o;  // activated gates
  A c, h;        // new cell and hidden state
};

// pre_*: x W_ih^T + b_ih + h W_hh^T + b_hh for each gate.
template <typename A>
FUSEDRNN_HD LSTMForward<A> lstm_forward(A pre_i, A pre_f, A pre_g, A pre_o, A c_prev) {
  LSTMForward<A> r;
  r.i = sigmoid(pre_i);
  r.f = sigmoid(pre_f);
  r.g = tanh_(pre_g);
  r.o = sigmoid(pre_o);
  r.c = r.f * c_prev + r.i * r.g;
  r.h = r.o * tanh_(r.c);
  return r;
}

template <typename A> struct LSTMBackward {
  A d_i, d_f, d_g, d_o;  // gradients of the gate pre-activations
  A d_c_prev;
};

// dh: total gradient reaching h_t (from the output and from step t+1); dc: gradient reaching c_t
// from step t+1.
template <typename A>
FUSEDRNN_HD LSTMBackward<A> lstm_backward(A i, A f, A g, A o, A c, A c_prev, A dh, A dc) {
  const A tanh_c = tanh_(c);
  const A dc_total = dc + dh * o * d_tanh(tanh_c);
  LSTMBackward<A> r;
  r.d_i = dc_total * g * d_sigmoid(i);
  r.d_f = dc_total * c_prev * d_sigmoid(f);
  r.d_g = dc_total * i * d_tanh(g);
  r.d_o = dh * tanh_c * d_sigmoid(o);
  r.d_c_prev = dc_total * f;
  return r;
}

// ---- GRU (gate order r, z, n, as torch.nn) ------------------------------------------------
//   r = sigmoid(xr + hr), z = sigmoid(xz + hz), n = tanh(xn + r * hn), h' = (1 - z) n + z h
// x*: x W_ih^T + b_ih; h*: h W_hh^T + b_hh.
template <typename A> struct GRUForward {
  A r, z, n, h;
};

template <typename A>
FUSEDRNN_HD GRUForward<A> gru_forward(A xr, A xz, A xn, A hr, A hz, A hn, A h_prev) {
  GRUForward<A> out;
  out.r = sigmoid(xr + hr);
  out.z = sigmoid(xz + hz);
  out.n = tanh_(xn + out.r * hn);
  out.h = (A(1) - out.z) * out.n + out.z * h_prev;
  return out;
}

template <typename A> struct GRUBackward {
  A d_r, d_z, d_n;  // gradients of the pre-activations r, z and of (xn + r * hn)
  A d_hn;           // gradient of hn = h W_hn^T + b_hn, which is d_n * r
  A d_h_prev;       // the direct path z * dh; the path through W_hh is a GEMM
};

template <typename A>
FUSEDRNN_HD GRUBackward<A> gru_backward(A r, A z, A n, A hn, A h_prev, A dh) {
  GRUBackward<A> out;
  out.d_n = dh * (A(1) - z) * d_tanh(n);
  out.d_z = dh * (h_prev - n) * d_sigmoid(z);
  out.d_r = out.d_n * hn * d_sigmoid(r);
  out.d_hn = out.d_n * r;
  out.d_h_prev = dh * z;
  return out;
}

// ---- Elman RNN: h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh) -------------------------------
template <typename A> FUSEDRNN_HD A rnn_forward(A pre, bool relu_act) {
  return relu_act ? relu(pre) : tanh_(pre);
}

// Gradient of the pre-activation from the gradient of h' and h' itself.
template <typename A> FUSEDRNN_HD A rnn_backward(A h, A dh, bool relu_act) {
  return relu_act ? relu_backward(h, dh) : dh * d_tanh(h);
}

}  // namespace gates
}  // namespace FUSEDRNN_ISA
}  // namespace fusedrnn
