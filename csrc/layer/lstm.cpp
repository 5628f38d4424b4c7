// The LSTM's ops: lstm_forward and lstm_backward (layer.h). The gate math is core/gates.h
// (lstm_forward, lstm_backward); the per-step kernels core/elements.h.
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>

#include <tuple>
#include <utility>

#include "beside_loop.h"
#include "gemm.h"
#include "layer.h"
#include "prepare.h"
#include "projections.h"
#include "recurrence.h"
#include "scratch.h"

namespace fusedrnn {

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& input_, const Tensor& h0_, const Tensor& c0_, const Tensor& w_ih_,
    const Tensor& w_hh_, const OptionalTensor& b_ih_, const OptionalTensor& b_hh_, bool reverse,
    bool training, const OptionalTensor& batch_sizes, const OptionalTensor& w_hr_) {
  const LayerCall L("fusedrnn.lstm_forward", 4, input_, batch_sizes, h0_, w_ih_, w_hh_, b_ih_,
                    b_hh_, w_hr_, reverse);
  const int64_t B = L.B, H = L.H, P = L.P;
  const Tensor c0 = L.argument("c0", c0_, {B, H});
  const Tensor &input = L.input, &h0 = L.h0, &w_hr = L.w_hr;
  const Pass pass = L.pass();

  const Recurrence recurrence(L, L.w_hh, 4, true, true,
                              {.bias = L.b_ih, .bias_2 = L.b_hh, .input_in_loop = true,
                               .gates_kept = training, .keep_packed = true});
  const bool in_loop = recurrence.adds_biases();  // else they go in with the projection
  // Like input, 4H wide; in training the activated gates, kept for the backward.
  Scratch scratch(input);
  // Inference whose loop projects the input needs only the step's gates: two [B, 4H] slots.
  const bool gate_slots = !training && recurrence.projects_input();
  Tensor gates = training     ? L.workspace_like(4 * H)
                 : gate_slots ? fresh({2 * B, 4 * H}, L.options())
                              : scratch.take(sequence_sizes(input, 4 * H));
  const OptionalTensor bias = in_loop ? std::nullopt : L.b_ih;
  const OptionalTensor bias_2 = in_loop ? std::nullopt : L.b_hh;
  const bool beside = !recurrence.projects_input() && projection_beside_loop(L);
  if (!recurrence.projects_input() && !beside) project_input(L, bias, bias_2, gates);
  Tensor output = L.result_like(P);
  // Training keeps every c_t; inference alternates between two [B, H] buffers.
  Tensor cells = training ? L.workspace_like(H) : fresh({2 * B, H}, L.options());
  // With a projection the cell's o * tanh(c) lands here, and h = that W_hr^T; training keeps
  // every step's for the gradient of W_hr.
  Tensor unprojected = !w_hr.defined() ? fresh({0}, L.options())
                       : training      ? L.workspace_like(H)
                                       : fresh({B, H}, L.options());
  Tensor hn = fresh({B, P}, L.options()), cn = fresh({B, H}, L.options());
  Tensor h_join, c_join;
  void *h = nullptr, *c = nullptr, *cell_out = nullptr;  // the latest step's
  const auto plan = [&](int64_t step) {
    const int64_t rows = pass.batch(step), first = pass.first_row(step);
    void* h_prev = pass.state_before(step, h0, h, h_join);
    void* c_prev = pass.state_before(step, c0, c, c_join);
    void* g = at_row(gates, gate_slots ? (step % 2) * B : first);
    h = at_row(output, first);
    c = at_row(cells, training ? first : (step % 2) * B);
    cell_out = w_hr.defined() ? at_row(unprojected, training ? first : 0) : h;
    return Step<LSTMForwardStep>{h_prev, rows, g,
                                 {g, c_prev, c, cell_out, rows, H, training}};
  };
  const auto done = [&](int64_t step) {
    if (w_hr.defined())
      gemm(input, Gemm{pass.batch(step), P, H, cell_out, false, w_hr.data_ptr(), true, h, false});
    pass.keep_final(step, h, hn);
    pass.keep_final(step, c, cn);
  };
  const auto project = [&](int64_t row, int64_t rows) {
    project_input_rows(L, bias, bias_2, gates, row, rows);
  };
  if (beside) loop_beside_projection(L, recurrence, project, plan, done);
  else recurrence.loop(pass, plan, done);
  if (!training) {  // inference returns none of them
    gates = fresh({0}, L.options());
    cells = fresh({0}, L.options());
    if (w_hr.defined()) unprojected = fresh({0}, L.options());
  }
  return std::tuple_cat(L.results(std::tuple{output, hn, cn}),
                        std::tuple{gates, cells, unprojected});
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const OptionalTensor& grad_output_, const OptionalTensor& grad_hn,
    const OptionalTensor& grad_cn, const Tensor& input_, const Tensor& h0_, const Tensor& c0_,
    const Tensor& w_ih_, const Tensor& w_hh_, const Tensor& output_, const Tensor& gates_,
    const Tensor& cells_, bool has_bias, bool reverse, const OptionalTensor& batch_sizes,
    const OptionalTensor& w_hr_, const OptionalTensor& unprojected_, bool weight_grads,
    bool h0_grad) {
  const LayerCall L("fusedrnn.lstm_backward", 4, input_, batch_sizes, h0_, w_ih_, w_hh_,
                    std::nullopt, std::nullopt, w_hr_, reverse);
  const int64_t B = L.B, H = L.H, P = L.P;
  const Tensor output = L.argument("output", output_, sequence_sizes(input_, P));
  const Tensor cells = L.workspace("cells", cells_, sequence_sizes(input_, H));
  const Tensor gates = L.workspace("gates", gates_, sequence_sizes(input_, 4 * H));
  TORCH_CHECK(!w_hr_ || (unprojected_ && unprojected_->defined()), L.op,
              ": with w_hr, pass the forward's unprojected cell outputs");
  const Tensor unprojected =
      w_hr_ ? L.workspace("unprojected", *unprojected_, cells_.sizes()) : Tensor();
  const Tensor c0 = L.argument("c0", c0_, {B, H});
  const Tensor grad_output = L.gradient("grad_output", grad_output_, output_.sizes());
  // Rows of sequences not yet reached keep their final-state gradient until their last step.
  Tensor dh = L.gradient_or_zeros("grad_hn", grad_hn, {B, P});
  Tensor dc = L.gradient_or_zeros("grad_cn", grad_cn, {B, H});
  const Tensor &input = L.input, &w_hr = L.w_hr;
  const Pass pass = L.pass();

  // With a projection: d_h, each step's whole gradient of h_t (kept for W_hr's gradient), and
  // d_cell_out = d_h W_hr, the gradient of o * tanh(c) that the pointwise step takes.
  Tensor d_h, d_cell_out;
  if (w_hr.defined()) {
    d_h = sequence_like(input, P);
    d_cell_out = fresh({B, H}, L.options());
  }
  Scratch scratch(input);
  Tensor d_gates = scratch.take(sequence_sizes(input, 4 * H)), c_join;
  const Recurrence recurrence(L, L.w_hh, 1, false, false);
  const auto plan = [&](int64_t step, const void* dg_after, int64_t rows_after) {
    const int64_t rows = pass.batch(step), first = pass.first_row(step);
    void* c_prev = pass.state_before(
        step, c0, step ? at_row(cells, pass.first_row(step - 1)) : nullptr, c_join);
    void *dy = at_row(grad_output, first), *d_cell = dh.data_ptr();
    if (w_hr.defined()) {  // not fused: the product, then the projection's gradient
      recurrence.product(std::exchange(dg_after, nullptr), rows_after, dh.data_ptr());
      Tensor total = at::from_blob(at_row(d_h, first), {rows, P}, L.options());
      const Tensor recurrent = dh.narrow(0, 0, rows);
      if (dy) at::add_out(total, at::from_blob(dy, {rows, P}, L.options()), recurrent);
      else total.copy_(recurrent);
      gemm(input, Gemm{rows, H, P, total.data_ptr(), false, w_hr.data_ptr(), false,
                       d_cell_out.data_ptr(), false});
      dy = nullptr, d_cell = d_cell_out.data_ptr();
    }
    return Step<LSTMBackwardStep>{dg_after, rows_after, dh.data_ptr(),
                                  {at_row(gates, first), at_row(cells, first), c_prev, dy, d_cell,
                                   dc.data_ptr(), at_row(d_gates, first), rows, H}};
  };
  if (!w_hr.defined() && grads_beside_loop(L, weight_grads)) {
    const GradsBesideLoop grads =
        run_beside_loop(L, d_gates, d_gates, output, has_bias, [&](const cpu::StepDone& done) {
          recurrence.loop_back(pass, d_gates, dh.data_ptr(), plan, h0_grad, done);
        });
    if (!h0_grad) dh = fresh({0}, L.options());
    return L.results(std::tuple{grads.input, dh, dc, grads.w_ih, grads.w_hh,
                                has_bias ? grads.bias_x : fresh({0}, L.options()),
                                fresh({0}, L.options())});
  }
  recurrence.loop_back(pass, d_gates, dh.data_ptr(), plan, h0_grad);
  if (!h0_grad) dh = fresh({0}, L.options());
  const GemmOperand d_operand =
      gemm_operand(L, d_gates, true, weight_grads, has_bias && weight_grads);
  auto [grad_input, grad_w_ih] = grads_through_input(L, d_operand, weight_grads);
  Tensor grad_w_hr = fresh({0}, L.options());
  if (w_hr.defined() && weight_grads) {
    grad_w_hr = at::empty_like(w_hr);
    gemm(input, Gemm{P, H, L.steps.rows, d_h.data_ptr(), true, unprojected.data_ptr(), false,
                     grad_w_hr.data_ptr(), false});
  }
  return L.results(std::tuple{grad_input, dh, dc, grad_w_ih,
                              weight_grads ? grad_w_hh(L, d_operand, output)
                                           : fresh({0}, L.options()),
                              bias_grad(d_operand, has_bias && weight_grads), grad_w_hr});
}

}  // namespace fusedrnn
