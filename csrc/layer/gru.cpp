// The GRU's ops: gru_forward and gru_backward (layer.h). The gate math is core/gates.h
// (gru_forward, gru_backward); the per-step kernels core/elements.h.
#include <ATen/core/Tensor.h>

#include <tuple>

#include "beside_loop.h"
#include "layer.h"
#include "prepare.h"
#include "projections.h"
#include "recurrence.h"
#include "scratch.h"

namespace fusedrnn {

std::tuple<Tensor, Tensor, Tensor> gru_forward(
    const Tensor& input_, const Tensor& h0_, const Tensor& w_ih_, const Tensor& w_hh_,
    const OptionalTensor& b_ih_, const OptionalTensor& b_hh_, bool reverse, bool training,
    const OptionalTensor& batch_sizes) {
  const LayerCall L("fusedrnn.gru_forward", 3, input_, batch_sizes, h0_, w_ih_, w_hh_, b_ih_,
                    b_hh_, std::nullopt, reverse);
  const int64_t B = L.B, H = L.H;
  const Tensor& input = L.input;
  const Pass pass = L.pass();

  Scratch scratch(input);
  // b_hh stays out: the step adds it to h W_hh^T, inside r * (h W_hn^T + b_hn).
  const bool beside = projection_beside_loop(L);
  Tensor x_gates = scratch.take(sequence_sizes(input, 3 * H));
  if (!beside) project_input(L, L.b_ih, std::nullopt, x_gates);
  Tensor h_gates = fresh({B, 3 * H}, L.options());  // h_{t-1} W_hh^T
  Tensor output = L.result_like(H);
  Tensor saved = training ? L.workspace_like(4 * H) : fresh({0}, L.options());
  Tensor hn = fresh({B, H}, L.options()), h_join;
  const void* b_hh = L.b_hh ? L.b_hh->data_ptr() : nullptr;  // read by the step kernel
  const Recurrence recurrence(L, L.w_hh, 3, true, false, {.keep_packed = true});
  void* h = nullptr;  // the latest step's
  const auto plan = [&](int64_t step) {
    const int64_t rows = pass.batch(step), first = pass.first_row(step);
    void* h_prev = pass.state_before(step, L.h0, h, h_join);
    h = at_row(output, first);
    return Step<GRUForwardStep>{
        h_prev, rows, h_gates.data_ptr(),
        {at_row(x_gates, first), h_gates.data_ptr(), b_hh, h_prev, h,
         training ? at_row(saved, first) : nullptr, rows, H}};
  };
  const auto done = [&](int64_t step) { pass.keep_final(step, h, hn); };
  const auto project = [&](int64_t row, int64_t rows) {
    project_input_rows(L, L.b_ih, std::nullopt, x_gates, row, rows);
  };
  if (beside) loop_beside_projection(L, recurrence, project, plan, done);
  else recurrence.loop(pass, plan, done);
  return std::tuple_cat(L.results(std::tuple{output, hn}), std::tuple{saved});
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const OptionalTensor& grad_output_, const OptionalTensor& grad_hn, const Tensor& input_,
    const Tensor& h0_, const Tensor& w_ih_, const Tensor& w_hh_, const Tensor& output_,
    const Tensor& saved_, bool has_bias, bool reverse, const OptionalTensor& batch_sizes,
    bool weight_grads, bool h0_grad) {
  const LayerCall L("fusedrnn.gru_backward", 3, input_, batch_sizes, h0_, w_ih_, w_hh_,
                    std::nullopt, std::nullopt, std::nullopt, reverse);
  const int64_t B = L.B, H = L.H;
  const Tensor output = L.argument("output", output_, sequence_sizes(input_, H));
  const Tensor saved = L.workspace("saved", saved_, sequence_sizes(input_, 4 * H));
  const Tensor grad_output = L.gradient("grad_output", grad_output_, output_.sizes());
  Tensor dh = L.gradient_or_zeros("grad_hn", grad_hn, {B, H});
  const Tensor& input = L.input;
  const Pass pass = L.pass();

  Scratch scratch(input);
  Tensor d_x_gates = scratch.take(sequence_sizes(input, 3 * H));
  Tensor d_h_gates = scratch.take(sequence_sizes(input, 3 * H));
  Tensor h_join;
  // The gradient reaching h_{t-1}: z * dh, left in dh by the step, plus the path through W_hh.
  const Recurrence recurrence(L, L.w_hh, 1, false, true);
  const auto plan = [&](int64_t step, const void* dhg_after, int64_t rows_after) {
    const int64_t rows = pass.batch(step), first = pass.first_row(step);
    void* h_prev = pass.state_before(
        step, L.h0, step ? at_row(output, pass.first_row(step - 1)) : nullptr, h_join);
    return Step<GRUBackwardStep>{dhg_after, rows_after, dh.data_ptr(),
                                 {at_row(saved, first), h_prev, at_row(grad_output, first),
                                  dh.data_ptr(), at_row(d_x_gates, first),
                                  at_row(d_h_gates, first), rows, H}};
  };
  if (grads_beside_loop(L, weight_grads)) {
    const GradsBesideLoop grads = run_beside_loop(
        L, d_x_gates, d_h_gates, output, has_bias, [&](const cpu::StepDone& done) {
          recurrence.loop_back(pass, d_h_gates, dh.data_ptr(), plan, h0_grad, done);
        });
    if (!h0_grad) dh = fresh({0}, L.options());
    const auto bias = [&](const Tensor& b) { return has_bias ? b : fresh({0}, L.options()); };
    return L.results(std::tuple{grads.input, dh, grads.w_ih, grads.w_hh, bias(grads.bias_x),
                                bias(grads.bias_h)});
  }
  recurrence.loop_back(pass, d_h_gates, dh.data_ptr(), plan, h0_grad);
  if (!h0_grad) dh = fresh({0}, L.options());
  const bool bias_grads = has_bias && weight_grads;
  const GemmOperand d_x = gemm_operand(L, d_x_gates, true, weight_grads, bias_grads);
  auto [grad_input, grad_w_ih] = grads_through_input(L, d_x, weight_grads);
  const GemmOperand d_h = gemm_operand(L, d_h_gates, false, weight_grads, bias_grads);
  return L.results(std::tuple{
      grad_input, dh, grad_w_ih,
      weight_grads ? grad_w_hh(L, d_h, output) : fresh({0}, L.options()),
      bias_grad(d_x, bias_grads), bias_grad(d_h, bias_grads)});
}

}  // namespace fusedrnn
