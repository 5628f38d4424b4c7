// The Elman RNN's ops (tanh or relu): rnn_forward and rnn_backward (layer.h). The gate math is
// core/gates.h (rnn_forward, rnn_backward); the per-step kernels core/elements.h.
#include <ATen/core/Tensor.h>

#include "beside_loop.h"
#include "layer.h"
#include "prepare.h"
#include "projections.h"
#include "recurrence.h"
#include "scratch.h"

namespace fusedrnn {

std::tuple<Tensor, Tensor> rnn_forward(
    const Tensor& input_, const Tensor& h0_, const Tensor& w_ih_, const Tensor& w_hh_,
    const OptionalTensor& b_ih_, const OptionalTensor& b_hh_, bool relu, bool reverse,
    const OptionalTensor& batch_sizes) {
  const LayerCall L("fusedrnn.rnn_forward", 1, input_, batch_sizes, h0_, w_ih_, w_hh_, b_ih_,
                    b_hh_, std::nullopt, reverse);
  const int64_t B = L.B, H = L.H;
  const Pass pass = L.pass();

  const Recurrence recurrence(L, L.w_hh, 1, true, true,
                              {.bias = L.b_ih, .bias_2 = L.b_hh, .input_in_loop = true,
                               .keep_packed = true});
  const bool in_loop = recurrence.adds_biases();  // else they go in with the projection
  // Each step's rows of output hold the pre-activation until the step turns them into h_t.
  Tensor output = L.result_like(H);
  const OptionalTensor bias = in_loop ? std::nullopt : L.b_ih;
  const OptionalTensor bias_2 = in_loop ? std::nullopt : L.b_hh;
  const bool beside = !recurrence.projects_input() && projection_beside_loop(L);
  if (!recurrence.projects_input() && !beside) project_input(L, bias, bias_2, output);
  Tensor hn = fresh({B, H}, L.options()), h_join;
  void* h = nullptr;  // the latest step's
  const auto plan = [&](int64_t step) {
    const int64_t rows = pass.batch(step);
    void* h_prev = pass.state_before(step, L.h0, h, h_join);
    h = at_row(output, pass.first_row(step));
    return Step<RNNForwardStep>{h_prev, rows, h, {h, rows, H, relu}};
  };
  const auto done = [&](int64_t step) { pass.keep_final(step, h, hn); };
  const auto project = [&](int64_t row, int64_t rows) {
    project_input_rows(L, bias, bias_2, output, row, rows);
  };
  if (beside) loop_beside_projection(L, recurrence, project, plan, done);
  else recurrence.loop(pass, plan, done);
  return L.results(std::tuple{output, hn});
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_backward(
    const OptionalTensor& grad_output_, const OptionalTensor& grad_hn, const Tensor& input_,
    const Tensor& h0_, const Tensor& w_ih_, const Tensor& w_hh_, const Tensor& output_,
    bool has_bias, bool relu, bool reverse, const OptionalTensor& batch_sizes,
    bool weight_grads, bool h0_grad) {
  const LayerCall L("fusedrnn.rnn_backward", 1, input_, batch_sizes, h0_, w_ih_, w_hh_,
                    std::nullopt, std::nullopt, std::nullopt, reverse);
  const int64_t B = L.B, H = L.H;
  const Tensor output = L.argument("output", output_, sequence_sizes(input_, H));
  const Tensor grad_output = L.gradient("grad_output", grad_output_, output_.sizes());
  Tensor dh = L.gradient_or_zeros("grad_hn", grad_hn, {B, H});
  const Pass pass = L.pass();

  Scratch scratch(L.input);
  Tensor d_pre = scratch.take(sequence_sizes(L.input, H));
  // The gradient reaching h_{t-1}.
  const Recurrence recurrence(L, L.w_hh, 1, false, false);
  const auto plan = [&](int64_t step, const void* dp_after, int64_t rows_after) {
    const int64_t rows = pass.batch(step), first = pass.first_row(step);
    return Step<RNNBackwardStep>{dp_after, rows_after, dh.data_ptr(),
                                 {at_row(output, first), at_row(grad_output, first),
                                  dh.data_ptr(), at_row(d_pre, first), rows, H, relu}};
  };
  if (grads_beside_loop(L, weight_grads)) {
    const GradsBesideLoop grads =
        run_beside_loop(L, d_pre, d_pre, output, has_bias, [&](const cpu::StepDone& done) {
          recurrence.loop_back(pass, d_pre, dh.data_ptr(), plan, h0_grad, done);
        });
    if (!h0_grad) dh = fresh({0}, L.options());
    return L.results(std::tuple{grads.input, dh, grads.w_ih, grads.w_hh,
                                has_bias ? grads.bias_x : fresh({0}, L.options())});
  }
  recurrence.loop_back(pass, d_pre, dh.data_ptr(), plan, h0_grad);
  if (!h0_grad) dh = fresh({0}, L.options());
  const GemmOperand d_operand =
      gemm_operand(L, d_pre, true, weight_grads, has_bias && weight_grads);
  auto [grad_input, grad_w_ih] = grads_through_input(L, d_operand, weight_grads);
  return L.results(std::tuple{
      grad_input, dh, grad_w_ih,
      weight_grads ? grad_w_hh(L, d_operand, output) : fresh({0}, L.options()),
      bias_grad(d_operand, has_bias && weight_grads)});
}

}  // namespace fusedrnn
