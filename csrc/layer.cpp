#include "layer.h"

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#ifdef FUSEDRNN_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
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
  const Tensor x = input.view({-1, input.size(2)});
  const Tensor out = bias.defined() ? at::addmm(bias, x, w_ih.t()) : at::mm(x, w_ih.t());
  return out.view({input.size(0), input.size(1), w_ih.size(0)});
}

Tensor combined_bias(const OptionalTensor& b_ih, const OptionalTensor& b_hh) {
  return b_ih ? *b_ih + *b_hh : Tensor();
}

// The time index of the s-th step processed.
int64_t time_of(int64_t s, int64_t T, bool reverse) { return reverse ? T - 1 - s : s; }

// The state that entered the s-th step processed: `initial` for the first, else the row of
// `states` ([T, B, H]) written by the step before.
Tensor state_before(int64_t s, int64_t T, bool reverse, const Tensor& initial,
                    const Tensor& states) {
  return s == 0 ? initial : states[time_of(s - 1, T, reverse)];
}

// Sum over steps of d_pre[t]^T h_{t-1}: [G*H, H], as two GEMMs over all steps.
Tensor grad_w_hh(const Tensor& d_pre, const Tensor& h0, const Tensor& output, bool reverse) {
  const int64_t T = output.size(0), G_H = d_pre.size(2), H = output.size(2);
  const int64_t first = time_of(0, T, reverse);
  Tensor grad = at::mm(d_pre[first].t(), h0);
  if (T > 1) {
    // Forward: d_pre[1:] pairs with output[:-1]; reverse: d_pre[:-1] with output[1:].
    const Tensor d = d_pre.narrow(0, reverse ? 0 : 1, T - 1).reshape({-1, G_H});
    const Tensor h = output.narrow(0, reverse ? 1 : 0, T - 1).reshape({-1, H});
    grad.addmm_(d.t(), h);
  }
  return grad;
}

// grad_input = d_x W_ih and grad_w_ih = d_x^T x, for d_x the gradient of x W_ih^T: [T, B, G*H].
std::tuple<Tensor, Tensor> grads_through_input(const Tensor& d_x, const Tensor& input,
                                               const Tensor& w_ih) {
  const Tensor d = d_x.view({-1, d_x.size(2)});
  const Tensor grad_input = at::mm(d, w_ih).view(input.sizes());
  const Tensor grad_w_ih = at::mm(d.t(), input.view({-1, input.size(2)}));
  return {grad_input, grad_w_ih};
}

Tensor bias_grad(const Tensor& d_pre, bool has_bias) {
  return has_bias ? d_pre.view({-1, d_pre.size(2)}).sum(0) : at::empty({0}, d_pre.options());
}

void* row_ptr(const Tensor& seq, int64_t t) { return seq.defined() ? seq[t].data_ptr() : nullptr; }

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
  Tensor h_prev = h0, c_prev = c0;
  for (int64_t step = 0; step < s.T; ++step) {
    const int64_t t = time_of(step, s.T, reverse);
    Tensor g = gates[t];
    g.addmm_(h_prev, w_hh.t());
    Tensor c = cells[training ? t : step % 2], h = output[t];
    run_step(input, LSTMForwardStep{g.data_ptr(), c_prev.data_ptr(), c.data_ptr(), h.data_ptr(),
                                    s.B, s.H, training});
    h_prev = h;
    c_prev = c;
  }
  Tensor hn = h_prev.clone(), cn = c_prev.clone();
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
    const Tensor c_prev = state_before(step, s.T, reverse, c0, cells);
    Tensor dg = d_gates[t];
    run_step(input, LSTMBackwardStep{gates[t].data_ptr(), cells[t].data_ptr(), c_prev.data_ptr(),
                                     row_ptr(grad_output, t), dh.data_ptr(), dc.data_ptr(),
                                     dg.data_ptr(), s.B, s.H});
    at::mm_out(dh, dg, w_hh);  // gradient reaching h_{t-1}
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
  Tensor h_gates = at::empty({s.B, 3 * s.H}, input.options());
  Tensor output = at::empty({s.T, s.B, s.H}, input.options());
  Tensor saved = training ? at::empty({s.T, s.B, 4 * s.H}, input.options())
                          : at::empty({0}, input.options());
  Tensor h_prev = h0;
  for (int64_t step = 0; step < s.T; ++step) {
    const int64_t t = time_of(step, s.T, reverse);
    if (b_hh) at::addmm_out(h_gates, *b_hh, h_prev, w_hh.t());
    else at::mm_out(h_gates, h_prev, w_hh.t());
    Tensor h = output[t];
    run_step(input, GRUForwardStep{x_gates[t].data_ptr(), h_gates.data_ptr(), h_prev.data_ptr(),
                                   h.data_ptr(), training ? saved[t].data_ptr() : nullptr, s.B,
                                   s.H});
    h_prev = h;
  }
  return {output, h_prev.clone(), saved};
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
    const Tensor h_prev = state_before(step, s.T, reverse, h0, output);
    Tensor dhg = d_h_gates[t];
    run_step(input, GRUBackwardStep{saved[t].data_ptr(), h_prev.data_ptr(), row_ptr(grad_output, t),
                                    dh.data_ptr(), d_x_gates[t].data_ptr(), dhg.data_ptr(), s.B,
                                    s.H});
    dh.addmm_(dhg, w_hh);  // gradient reaching h_{t-1}: z * dh plus the path through W_hh
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
  Tensor h_prev = h0;
  for (int64_t step = 0; step < s.T; ++step) {
    Tensor h = output[time_of(step, s.T, reverse)];
    h.addmm_(h_prev, w_hh.t());
    run_step(input, RNNForwardStep{h.data_ptr(), s.B, s.H, relu});
    h_prev = h;
  }
  return {output, h_prev.clone()};
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
    Tensor dp = d_pre[t];
    run_step(input, RNNBackwardStep{output[t].data_ptr(), row_ptr(grad_output, t), dh.data_ptr(),
                                    dp.data_ptr(), s.B, s.H, relu});
    at::mm_out(dh, dp, w_hh);  // gradient reaching h_{t-1}
  }
  auto [grad_input, grad_w_ih] = grads_through_input(d_pre, input, w_ih);
  return {grad_input, dh, grad_w_ih, grad_w_hh(d_pre, h0, output, reverse),
          bias_grad(d_pre, has_bias)};
}

}  // namespace fusedrnn
