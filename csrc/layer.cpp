#include "layer.h"

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#ifdef FUSEDRNN_WITH_CUDA
#include <ATen/cuda/CUDAContextLight.h>
#include <c10/cuda/CUDAStream.h>
#include <cublas_v2.h>
#endif

#include "kernels/pointwise.h"

namespace fusedrnn {
namespace {

Dtype dtype_of(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return Dtype::kFloat32;
    case at::kDouble: return Dtype::kFloat64;
    case at::kHalf: return Dtype::kFloat16;
    case at::kBFloat16: return Dtype::kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, "fusedrnn: unsupported dtype ", t.scalar_type(),
                       "; expected float32, float64, float16 or bfloat16");
  }
}

// Runs one per-step kernel on the device of `like`, on PyTorch's current stream.
template <typename Args>
void run_step(const Tensor& like, const Args& args) {
  if (like.is_cuda()) {
#ifdef FUSEDRNN_WITH_CUDA
    cuda::step(dtype_of(like), args, c10::cuda::getCurrentCUDAStream(like.device().index()).stream());
#else
    TORCH_CHECK(false, "fusedrnn was built without CUDA; reinstall it where nvcc and a CUDA build "
                       "of torch are present (see the README)");
#endif
  } else {
    TORCH_CHECK(like.is_cpu(), "fusedrnn: tensors on ", like.device(), " are not supported");
    cpu::step(dtype_of(like), args);
  }
}

// Row-major C[M, N] = op(A)[M, K] op(B)[K, N] (+ C when accumulating), where op(X) = X^T for a
// matrix stored transposed. Every GEMM of an op goes through here, most of them once per step on
// raw rows of the sequence buffers: on CUDA straight into cuBLAS, since a dispatcher round trip
// per step would cost more than a small step's math.
struct Gemm {
  int64_t M, N, K;
  const void* a;
  bool a_transposed;  // a: [M, K], or [K, M] when transposed
  const void* b;
  bool b_transposed;  // b: [K, N], or [N, K] when transposed
  void* c;            // [M, N]
  bool accumulate;
};

#ifdef FUSEDRNN_WITH_CUDA
// cuBLAS on PyTorch's handle (bound to the current stream). float32 uses TF32 exactly when
// torch.backends.cudnn.allow_tf32 is set, the switch torch.nn's RNNs follow on the GPU; half
// types accumulate in float32.
void gemm_cuda(at::ScalarType dtype, const Gemm& g) {
  cudaDataType io = CUDA_R_32F;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  const float one_f = 1, beta_f = g.accumulate ? 1 : 0;
  const double one_d = 1, beta_d = g.accumulate ? 1 : 0;
  const void *one = &one_f, *beta = &beta_f;
  switch (dtype) {
    case at::kFloat:
      if (at::globalContext().allowTF32CuDNN()) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
      break;
    case at::kDouble:
      io = CUDA_R_64F, compute = CUBLAS_COMPUTE_64F, one = &one_d, beta = &beta_d;
      break;
    case at::kHalf: io = CUDA_R_16F; break;
    case at::kBFloat16: io = CUDA_R_16BF; break;
    default: TORCH_CHECK(false, "fusedrnn: no GEMM for ", dtype);
  }
  // Column-major, as cuBLAS sees it: C^T[N, M] = op(B)^T[N, K] op(A)^T[K, M].
  const cublasStatus_t status = cublasGemmEx(
      at::cuda::getCurrentCUDABlasHandle(), g.b_transposed ? CUBLAS_OP_T : CUBLAS_OP_N,
      g.a_transposed ? CUBLAS_OP_T : CUBLAS_OP_N, int(g.N), int(g.M), int(g.K), one, g.b, io,
      int(g.b_transposed ? g.K : g.N), g.a, io, int(g.a_transposed ? g.M : g.K), beta, g.c, io,
      int(g.N), compute, CUBLAS_GEMM_DEFAULT);
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "fusedrnn: cublasGemmEx failed with status ",
              int(status));
}
#endif

// A row-major matrix over borrowed memory, for the CPU path.
Tensor matrix(const void* data, int64_t rows, int64_t cols, bool transposed,
              const at::TensorOptions& options) {
  void* p = const_cast<void*>(data);
  return transposed ? at::from_blob(p, {cols, rows}, options).t()
                    : at::from_blob(p, {rows, cols}, options);
}

void gemm(const Tensor& like, const Gemm& g) {
  if (g.M == 0 || g.N == 0) return;
  if (g.K == 0) {  // an empty sum
    if (!g.accumulate) matrix(g.c, g.M, g.N, false, like.options()).zero_();
    return;
  }
  if (like.is_cuda()) {
#ifdef FUSEDRNN_WITH_CUDA
    return gemm_cuda(like.scalar_type(), g);
#endif
  }
  // The CPU BLAS is reachable only through ATen ops.
  const Tensor a = matrix(g.a, g.M, g.K, g.a_transposed, like.options());
  const Tensor b = matrix(g.b, g.K, g.N, g.b_transposed, like.options());
  Tensor c = matrix(g.c, g.M, g.N, false, like.options());
  if (g.accumulate) c.addmm_(a, b);
  else at::mm_out(c, a, b);
}

// Address of row t of a contiguous [T, ...] tensor, or null for an undefined one.
void* row(const Tensor& seq, int64_t t) {
  if (!seq.defined()) return nullptr;
  return static_cast<char*>(seq.data_ptr()) + t * seq.stride(0) * seq.element_size();
}

struct Sizes {
  int64_t T, B, I, H;
};

void check_like(const char* op, const char* name, const Tensor& t, const Tensor& input) {
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " is on ", t.device(),
              " but input is on ", input.device());
  TORCH_CHECK_TYPE(t.scalar_type() == input.scalar_type(), op, ": ", name, " has dtype ",
                   t.scalar_type(), " but input has dtype ", input.scalar_type());
}

void check_shape(const char* op, const char* name, const Tensor& t, at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", expected, ", got ",
              t.sizes());
}

// Validates one layer's arguments for a cell with `gates` gate blocks; returns the sizes.
Sizes check_layer(const char* op, int64_t gates, const Tensor& input, const Tensor& h0,
                  const Tensor& w_ih, const Tensor& w_hh, const OptionalTensor& b_ih,
                  const OptionalTensor& b_hh) {
  TORCH_CHECK(input.dim() == 3, op, ": input must be 3-D [T, B, I], got shape ", input.sizes());
  TORCH_CHECK(input.size(0) > 0, op, ": the sequence length must be at least 1, got 0");
  dtype_of(input);
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) % gates == 0, op, ": w_hh must be [", gates,
              "*H, H], got shape ", w_hh.sizes());
  const Sizes s{input.size(0), input.size(1), input.size(2), w_hh.size(1)};
  TORCH_CHECK(w_hh.size(0) == gates * s.H, op, ": w_hh must be [", gates, "*H, H], got shape ",
              w_hh.sizes());
  check_shape(op, "w_ih", w_ih, {gates * s.H, s.I});
  check_shape(op, "h0", h0, {s.B, s.H});
  check_like(op, "w_ih", w_ih, input);
  check_like(op, "w_hh", w_hh, input);
  check_like(op, "h0", h0, input);
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), op, ": pass both b_ih and b_hh, or neither");
  if (b_ih) {
    check_shape(op, "b_ih", *b_ih, {gates * s.H});
    check_shape(op, "b_hh", *b_hh, {gates * s.H});
    check_like(op, "b_ih", *b_ih, input);
    check_like(op, "b_hh", *b_hh, input);
  }
  return s;
}

// Checks a gradient from autograd and makes it contiguous; undefined stays undefined.
Tensor grad_or_undefined(const char* op, const char* name, const OptionalTensor& g,
                         at::IntArrayRef shape, const Tensor& input) {
  if (!g || !g->defined()) return Tensor();
  check_shape(op, name, *g, shape);
  check_like(op, name, *g, input);
  return g->contiguous();
}

Tensor grad_or_zeros(const char* op, const char* name, const OptionalTensor& g,
                     at::IntArrayRef shape, const Tensor& input) {
  Tensor t = grad_or_undefined(op, name, g, shape, input);
  return t.defined() ? t.clone() : at::zeros(shape, input.options());
}

// x W_ih^T + bias for all time steps at once: [T, B, G*H].
Tensor project_input(const Tensor& input, const Tensor& w_ih, const Tensor& bias) {
  const int64_t rows = input.size(0) * input.size(1), G_H = w_ih.size(0);
  Tensor out = bias.defined() ? bias.expand({input.size(0), input.size(1), G_H}).contiguous()
                              : at::empty({input.size(0), input.size(1), G_H}, input.options());
  gemm(input, Gemm{rows, G_H, input.size(2), input.data_ptr(), false, w_ih.data_ptr(), true,
                   out.data_ptr(), bias.defined()});
  return out;
}

Tensor combined_bias(const OptionalTensor& b_ih, const OptionalTensor& b_hh) {
  return b_ih ? *b_ih + *b_hh : Tensor();
}

// The time index of the s-th step processed.
int64_t time_of(int64_t s, int64_t T, bool reverse) { return reverse ? T - 1 - s : s; }

// The state that entered the s-th step processed: `initial` for the first, else the row of
// `states` ([T, B, H]) written by the step before.
void* state_before(int64_t s, int64_t T, bool reverse, const Tensor& initial,
                   const Tensor& states) {
  return s == 0 ? initial.data_ptr() : row(states, time_of(s - 1, T, reverse));
}

// Sum over steps of d_pre[t]^T h_{t-1}: [G*H, H], as two GEMMs over all steps.
Tensor grad_w_hh(const Tensor& d_pre, const Tensor& h0, const Tensor& output, bool reverse) {
  const int64_t T = output.size(0), B = output.size(1), H = output.size(2), G_H = d_pre.size(2);
  Tensor grad = at::empty({G_H, H}, output.options());
  gemm(output, Gemm{G_H, H, B, row(d_pre, time_of(0, T, reverse)), true, h0.data_ptr(), false,
                    grad.data_ptr(), false});
  // Forward: d_pre[1:] pairs with output[:-1]; reverse: d_pre[:-1] with output[1:].
  gemm(output, Gemm{G_H, H, (T - 1) * B, row(d_pre, reverse ? 0 : 1), true,
                    row(output, reverse ? 1 : 0), false, grad.data_ptr(), true});
  return grad;
}

// grad_input = d_x W_ih and grad_w_ih = d_x^T x, for d_x the gradient of x W_ih^T: [T, B, G*H].
std::tuple<Tensor, Tensor> grads_through_input(const Tensor& d_x, const Tensor& input,
                                               const Tensor& w_ih) {
  const int64_t rows = input.size(0) * input.size(1), I = input.size(2), G_H = w_ih.size(0);
  Tensor grad_input = at::empty_like(input), grad_w_ih = at::empty_like(w_ih);
  gemm(input, Gemm{rows, I, G_H, d_x.data_ptr(), false, w_ih.data_ptr(), false,
                   grad_input.data_ptr(), false});
  gemm(input, Gemm{G_H, I, rows, d_x.data_ptr(), true, input.data_ptr(), false,
                   grad_w_ih.data_ptr(), false});
  return {grad_input, grad_w_ih};
}

Tensor bias_grad(const Tensor& d_pre, bool has_bias) {
  return has_bias ? d_pre.view({-1, d_pre.size(2)}).sum(0) : at::empty({0}, d_pre.options());
}


}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& input_, const Tensor& h0_, const Tensor& c0_, const Tensor& w_ih_,
    const Tensor& w_hh_, const OptionalTensor& b_ih, const OptionalTensor& b_hh, bool reverse,
    bool training) {
  constexpr const char* op = "fusedrnn.lstm_forward";
  const auto s = check_layer(op, 4, input_, h0_, w_ih_, w_hh_, b_ih, b_hh);
  check_shape(op, "c0", c0_, {s.B, s.H});
  check_like(op, "c0", c0_, input_);
  c10::DeviceGuard guard(input_.device());
  const Tensor input = input_.contiguous(), h0 = h0_.contiguous(), c0 = c0_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();

  Tensor gates = project_input(input, w_ih, combined_bias(b_ih, b_hh));  // [T, B, 4H]
  Tensor output = at::empty({s.T, s.B, s.H}, input.options());
  // Training keeps every c_t; inference alternates between two buffers.
  Tensor cells = at::empty({training ? s.T : 2, s.B, s.H}, input.options());
  void *h_prev = h0.data_ptr(), *c_prev = c0.data_ptr();
  for (int64_t step = 0; step < s.T; ++step) {
    const int64_t t = time_of(step, s.T, reverse);
    void *g = row(gates, t), *c = row(cells, training ? t : step % 2), *h = row(output, t);
    gemm(input, Gemm{s.B, 4 * s.H, s.H, h_prev, false, w_hh.data_ptr(), true, g, true});
    run_step(input, LSTMForwardStep{g, c_prev, c, h, s.B, s.H, training});
    h_prev = h;
    c_prev = c;
  }
  const int64_t last = time_of(s.T - 1, s.T, reverse);
  Tensor hn = output[last].clone(), cn = cells[training ? last : (s.T - 1) % 2].clone();
  if (!training) {
    gates = at::empty({0}, input.options());
    cells = at::empty({0}, input.options());
  }
  return {output, hn, cn, gates, cells};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const OptionalTensor& grad_output_, const OptionalTensor& grad_hn,
    const OptionalTensor& grad_cn, const Tensor& input_, const Tensor& h0_, const Tensor& c0_,
    const Tensor& w_ih_, const Tensor& w_hh_, const Tensor& output, const Tensor& gates,
    const Tensor& cells, bool has_bias, bool reverse) {
  constexpr const char* op = "fusedrnn.lstm_backward";
  const auto s = check_layer(op, 4, input_, h0_, w_ih_, w_hh_, std::nullopt, std::nullopt);
  check_shape(op, "output", output, {s.T, s.B, s.H});
  check_shape(op, "gates", gates, {s.T, s.B, 4 * s.H});
  check_shape(op, "cells", cells, {s.T, s.B, s.H});
  c10::DeviceGuard guard(input_.device());
  const Tensor input = input_.contiguous(), h0 = h0_.contiguous(), c0 = c0_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  const Tensor grad_output = grad_or_undefined(op, "grad_output", grad_output_, output.sizes(), input);
  Tensor dh = grad_or_zeros(op, "grad_hn", grad_hn, {s.B, s.H}, input);
  Tensor dc = grad_or_zeros(op, "grad_cn", grad_cn, {s.B, s.H}, input);

  Tensor d_gates = at::empty({s.T, s.B, 4 * s.H}, input.options());
  for (int64_t step = s.T - 1; step >= 0; --step) {
    const int64_t t = time_of(step, s.T, reverse);
    void* dg = row(d_gates, t);
    run_step(input, LSTMBackwardStep{row(gates, t), row(cells, t),
                                     state_before(step, s.T, reverse, c0, cells),
                                     row(grad_output, t), dh.data_ptr(), dc.data_ptr(), dg, s.B,
                                     s.H});
    // The gradient reaching h_{t-1}.
    gemm(input, Gemm{s.B, s.H, 4 * s.H, dg, false, w_hh.data_ptr(), false, dh.data_ptr(), false});
  }
  auto [grad_input, grad_w_ih] = grads_through_input(d_gates, input, w_ih);
  return {grad_input, dh, dc, grad_w_ih, grad_w_hh(d_gates, h0, output, reverse),
          bias_grad(d_gates, has_bias)};
}

std::tuple<Tensor, Tensor, Tensor> gru_forward(
    const Tensor& input_, const Tensor& h0_, const Tensor& w_ih_, const Tensor& w_hh_,
    const OptionalTensor& b_ih, const OptionalTensor& b_hh, bool reverse, bool training) {
  constexpr const char* op = "fusedrnn.gru_forward";
  const auto s = check_layer(op, 3, input_, h0_, w_ih_, w_hh_, b_ih, b_hh);
  c10::DeviceGuard guard(input_.device());
  const Tensor input = input_.contiguous(), h0 = h0_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();

  const Tensor x_gates = project_input(input, w_ih, b_ih ? *b_ih : Tensor());  // [T, B, 3H]
  Tensor h_gates = at::empty({s.B, 3 * s.H}, input.options());  // h_{t-1} W_hh^T
  Tensor output = at::empty({s.T, s.B, s.H}, input.options());
  Tensor saved = training ? at::empty({s.T, s.B, 4 * s.H}, input.options())
                          : at::empty({0}, input.options());
  void* h_prev = h0.data_ptr();
  for (int64_t step = 0; step < s.T; ++step) {
    const int64_t t = time_of(step, s.T, reverse);
    void* h = row(output, t);
    gemm(input, Gemm{s.B, 3 * s.H, s.H, h_prev, false, w_hh.data_ptr(), true, h_gates.data_ptr(),
                     false});
    run_step(input, GRUForwardStep{row(x_gates, t), h_gates.data_ptr(),
                                   b_hh ? b_hh->data_ptr() : nullptr, h_prev, h,
                                   training ? row(saved, t) : nullptr, s.B, s.H});
    h_prev = h;
  }
  return {output, output[time_of(s.T - 1, s.T, reverse)].clone(), saved};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const OptionalTensor& grad_output_, const OptionalTensor& grad_hn, const Tensor& input_,
    const Tensor& h0_, const Tensor& w_ih_, const Tensor& w_hh_, const Tensor& output,
    const Tensor& saved, bool has_bias, bool reverse) {
  constexpr const char* op = "fusedrnn.gru_backward";
  const auto s = check_layer(op, 3, input_, h0_, w_ih_, w_hh_, std::nullopt, std::nullopt);
  check_shape(op, "output", output, {s.T, s.B, s.H});
  check_shape(op, "saved", saved, {s.T, s.B, 4 * s.H});
  c10::DeviceGuard guard(input_.device());
  const Tensor input = input_.contiguous(), h0 = h0_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  const Tensor grad_output = grad_or_undefined(op, "grad_output", grad_output_, output.sizes(), input);
  Tensor dh = grad_or_zeros(op, "grad_hn", grad_hn, {s.B, s.H}, input);

  Tensor d_x_gates = at::empty({s.T, s.B, 3 * s.H}, input.options());
  Tensor d_h_gates = at::empty({s.T, s.B, 3 * s.H}, input.options());
  for (int64_t step = s.T - 1; step >= 0; --step) {
    const int64_t t = time_of(step, s.T, reverse);
    void* dhg = row(d_h_gates, t);
    run_step(input, GRUBackwardStep{row(saved, t), state_before(step, s.T, reverse, h0, output),
                                    row(grad_output, t), dh.data_ptr(), row(d_x_gates, t), dhg,
                                    s.B, s.H});
    // The gradient reaching h_{t-1}: z * dh, left in dh by the step, plus the path through W_hh.
    gemm(input, Gemm{s.B, s.H, 3 * s.H, dhg, false, w_hh.data_ptr(), false, dh.data_ptr(), true});
  }
  auto [grad_input, grad_w_ih] = grads_through_input(d_x_gates, input, w_ih);
  return {grad_input, dh, grad_w_ih, grad_w_hh(d_h_gates, h0, output, reverse),
          bias_grad(d_x_gates, has_bias), bias_grad(d_h_gates, has_bias)};
}

std::tuple<Tensor, Tensor> rnn_forward(
    const Tensor& input_, const Tensor& h0_, const Tensor& w_ih_, const Tensor& w_hh_,
    const OptionalTensor& b_ih, const OptionalTensor& b_hh, bool relu, bool reverse) {
  constexpr const char* op = "fusedrnn.rnn_forward";
  const auto s = check_layer(op, 1, input_, h0_, w_ih_, w_hh_, b_ih, b_hh);
  c10::DeviceGuard guard(input_.device());
  const Tensor input = input_.contiguous(), h0 = h0_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();

  // Each row of output holds the pre-activation until its step turns it into h_t.
  Tensor output = project_input(input, w_ih, combined_bias(b_ih, b_hh));
  void* h_prev = h0.data_ptr();
  for (int64_t step = 0; step < s.T; ++step) {
    void* h = row(output, time_of(step, s.T, reverse));
    gemm(input, Gemm{s.B, s.H, s.H, h_prev, false, w_hh.data_ptr(), true, h, true});
    run_step(input, RNNForwardStep{h, s.B, s.H, relu});
    h_prev = h;
  }
  return {output, output[time_of(s.T - 1, s.T, reverse)].clone()};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_backward(
    const OptionalTensor& grad_output_, const OptionalTensor& grad_hn, const Tensor& input_,
    const Tensor& h0_, const Tensor& w_ih_, const Tensor& w_hh_, const Tensor& output,
    bool has_bias, bool relu, bool reverse) {
  constexpr const char* op = "fusedrnn.rnn_backward";
  const auto s = check_layer(op, 1, input_, h0_, w_ih_, w_hh_, std::nullopt, std::nullopt);
  check_shape(op, "output", output, {s.T, s.B, s.H});
  c10::DeviceGuard guard(input_.device());
  const Tensor input = input_.contiguous(), h0 = h0_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  const Tensor grad_output = grad_or_undefined(op, "grad_output", grad_output_, output.sizes(), input);
  Tensor dh = grad_or_zeros(op, "grad_hn", grad_hn, {s.B, s.H}, input);

  Tensor d_pre = at::empty({s.T, s.B, s.H}, input.options());
  for (int64_t step = s.T - 1; step >= 0; --step) {
    const int64_t t = time_of(step, s.T, reverse);
    void* dp = row(d_pre, t);
    run_step(input, RNNBackwardStep{row(output, t), row(grad_output, t), dh.data_ptr(), dp, s.B,
                                    s.H, relu});
    // The gradient reaching h_{t-1}.
    gemm(input, Gemm{s.B, s.H, s.H, dp, false, w_hh.data_ptr(), false, dh.data_ptr(), false});
  }
  auto [grad_input, grad_w_ih] = grads_through_input(d_pre, input, w_ih);
  return {grad_input, dh, grad_w_ih, grad_w_hh(d_pre, h0, output, reverse),
          bias_grad(d_pre, has_bias)};
}

}  // namespace fusedrnn
