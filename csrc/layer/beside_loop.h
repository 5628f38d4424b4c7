// The whole-sequence GEMMs beside the loop over time rather than before or after it, where torch
// runs two CPU threads: one thread runs the loop on its own while the other computes the
// forward's input projection ahead of it, or the backward's gradients from the steps it has
// finished. A loop's team of two threads gained little over one thread (at T=48 B=32 H=128 on
// an Ice Lake, 1.25x; the GEMMs 1.4x). The choice depends on the call and torch's thread count
// alone, not on how busy the CPUs are, so that results are the same from run to run.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>

#include "../cpu/recurrence.h"
#include "prepare.h"
#include "recurrence.h"

namespace fusedrnn {

// What follows from the gradients the backward loop leaves: d_x, of x W_ih^T, and d_h, of
// h_{t-1} W_hh^T (the same tensor for the LSTM and the Elman RNN, whose biases then share one
// gradient). As grads_through_input, grad_w_hh and bias_grad compute them (projections.h).
struct GradsBesideLoop {
  Tensor input, w_ih, w_hh, bias_x, bias_h;  // the biases' empty without bias
};

// Whether a backward with weight gradients runs them beside its loop: a float32 or float64 call
// on the CPU over padded batches, where torch runs two threads, with enough rows and work.
bool grads_beside_loop(const LayerCall& call, bool weight_grads);

// Runs loop(done) on this thread, where the loop calls done(s) once the s-th step it processes
// has written its rows of d_x and d_h (loop_back's order: the last step first), while a second
// thread computes the gradients from chunks of finished steps; then both finish them. Each
// weight gradient is summed over the chunks in one order, whichever thread takes a chunk, so
// results do not change from run to run.
GradsBesideLoop run_beside_loop(const LayerCall& call, const Tensor& d_x, const Tensor& d_h,
                                const Tensor& output, bool has_bias,
                                const std::function<void(const cpu::StepDone&)>& loop);

// Whether a forward whose loop does not project its input itself projects it beside the loop
// (project_input_rows), on the same terms, in float32, at most 64 rows a step (above, a step's
// product is enough for the loop's team), where W_hh takes at most 3/4 of a core's L2: the
// loop's one thread then reads it from there. Inference on an Ice Lake (L2 1.25 MB),
// interleaved in one process: GRU T=48 B=32 H=128 1.17x, B=64 1.20x, T=100 B=16 H=256 (768 KB
// of W_hh) 1.10x-1.11x, B=8 1.10x; RNN T=100 B=16 H=128 1.10x, T=40 B=8 H=64 1.14x; LSTM
// T=100 B=16 H=128 1.04x; training 1.02x-1.05x. It lost with more: the LSTM at B=8 H=256
// (1 MB) 0.77x, at H=512 0.76x-0.84x, the GRU at H=512 0.92x; and in float64 (0.95x-0.97x).
bool projection_beside_loop(const LayerCall& call);

// Runs loop(wait) on one thread, where the loop calls wait(s) before its s-th step, while a
// second thread runs project(row, rows) over chunks of the steps in the loop's order; wait(s)
// returns once the s-th step's rows are projected, and while they are not, projects the next
// chunk no thread has taken, if any.
void run_projection_beside_loop(const LayerCall& call,
                                const std::function<void(int64_t row, int64_t rows)>& project,
                                const std::function<void(const cpu::StepDone&)>& loop);

// recurrence.loop(call's pass, plan, done) with each step's rows of the input projected first
// by project(row, rows) on the second thread (run_projection_beside_loop).
template <typename Plan, typename Done>
void loop_beside_projection(const LayerCall& call, const Recurrence& recurrence,
                            const std::function<void(int64_t row, int64_t rows)>& project,
                            const Plan& plan, const Done& done) {
  run_projection_beside_loop(call, project, [&](const cpu::StepDone& wait) {
    const auto planned = [&](int64_t step) {
      wait(step);
      return plan(step);
    };
    recurrence.loop(call.pass(), planned, done);
  });
}

}  // namespace fusedrnn
