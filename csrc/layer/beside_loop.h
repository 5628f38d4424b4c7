// The backward's whole-sequence GEMMs beside its loop over time rather than after it, where
// torch runs two CPU threads: one thread runs the loop on its own while the other computes the
// gradients from the steps it has finished. A loop's team of two threads gained little over
// one thread (at T=48 B=32 H=128 on an Ice Lake, 1.25x; the GEMMs 1.4x). The choice depends on
// the call and torch's thread count alone, not on how busy the CPUs are, so that results are
// the same from run to run.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>

#include "../cpu/recurrence.h"
#include "prepare.h"

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

}  // namespace fusedrnn
