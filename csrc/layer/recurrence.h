// A layer's loop over time on the backend chosen for its call (backend.h): each step's product
// with the recurrent weights, then its pointwise kernel.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>

#include "../core/persistent.h"
#include "../cpu/recurrence.h"
#include "backend.h"
#include "persistent.h"
#include "prepare.h"
#include "sequence.h"

namespace fusedrnn {
#ifdef FUSEDRNN_WITH_CUDA
namespace cuda {
class StepGemm;
}
#endif

// What a forward's loop may take on beside its recurrent product.
struct ForwardLoop {
  // The layer's biases (LSTM and RNN), which the fused CPU loop adds in its product
  // (adds_biases()); elsewhere the caller adds them to the input projection.
  OptionalTensor bias, bias_2;
  // Whether the loop may compute the input projection itself (a forward whose product adds up
  // x W_ih^T and h W_hh^T); projects_input() says whether it does, by projects_in_loop
  // (projections.h), for which gates_kept says whether the loop writes every step's gates.
  bool input_in_loop = false, gates_kept = true;
  // Whether the packed weights come from, and go to, the cache of packed weights
  // (packed_weights.h): a forward's do, as inference reuses them from call to call and a
  // training step pays one copy of weights that changed (level with packing for the call alone,
  // interleaved, LSTM and RNN with an optimizer step); the backward's products pack for the call.
  bool keep_packed = false;
};

// Runs one per-step kernel on the device of `like`, on PyTorch's current stream.
#define FUSEDRNN_DECLARE_RUN_STEP(Args) void run_step(const Tensor& like, const Args& args);
FUSEDRNN_FOR_EACH_STEP(FUSEDRNN_DECLARE_RUN_STEP)
#undef FUSEDRNN_DECLARE_RUN_STEP

// The loop: out[rows, N] (+)= in[rows, K] W, then the step's pointwise kernel, each step. W is
// w^T for the forward (w = w_hh [G*H, K]) and w itself for the gradient reaching h (w = w_hh
// [G*H, H], K = G*H). On cpu-fused, each thread runs both on its own units over a packed copy
// of w, one team of threads for the whole loop (cpu/recurrence.h); on step, a GEMM then the step
// kernel (on CUDA a cuda::StepGemm, whose algorithm is chosen once for the loop; a single step,
// a cell, takes the plain GEMM, as what a loop prepares once would cost more than the one
// product it serves: LSTMCell, B=1, H=1024, CPU: 3.4 ms a step packed, torch.nn's 2.1); on
// cuda-persistent, one launch runs both for every step (layer/persistent.h).
class Recurrence {
 public:
  // gates: G of the product's output (the cell's for the forward, 1 for the gradient of h).
  // The loop of `call`'s pass, on its backend, with products in its product_dtype; a forward's
  // loop as `forward` says.
  Recurrence(const LayerCall& call, const Tensor& w, int64_t gates, bool transposed,
             bool accumulate, const ForwardLoop& forward = {});
  ~Recurrence();

  bool adds_biases() const { return bias_.defined(); }
  bool projects_input() const { return input_packed_.defined(); }

  // Runs the steps of `pass`: plan(s) -> Step<Args>, the s-th; done(s) once its results are in
  // place. Each may move rows between the loop's buffers, except over padded batches, whose
  // plans touch no data: there the CPU plans ahead (cpu::fused_loop's lookahead).
  template <typename Plan, typename Done>
  void loop(const Pass& pass, const Plan& plan, const Done& done) const {
    const int64_t steps = pass.steps.T, rows = pass.steps.B;
    using Args = decltype(plan(int64_t{}).args);
    if (backend_ == Backend::kCudaPersistent) {
      // One launch for every step: the plans first (on uniform batches they touch no data, and
      // each done(s) acts on the last step alone), then the loop, then what follows each step.
      std::vector<Step<Args>> table;
      table.reserve(size_t(steps));
      for (int64_t s = 0; s < steps; ++s) table.push_back(plan(s));
      run_persistent(w_, transposed_, accumulate_, gates_, rows, table);
      for (int64_t s = 0; s < steps; ++s) done(s);
      return;
    }
    if (!packed_.defined()) {
      for (int64_t s = 0; s < steps; ++s) {
        const Step<Args> step = plan(s);
        product(step.in, step.rows, step.out);
        run_step(w_, step.args);
        done(s);
      }
      return;
    }
    const cpu::PlanStep<Args> fill = [&](int64_t s, cpu::Product& product, Args& args) {
      const Step<Args> step = plan(s);
      product = fused(step.in, step.rows, step.out);
      if (projects_input()) {
        product.input = at_row(input_, pass.first_row(s));
        product.input_panels = &input_panels_;
        product.input_packed = input_packed_.data_ptr();
        product.accumulate = false;
      }
      args = step.args;
    };
    cpu::fused_loop<Args>(dtype_of(w_), panels_, steps, rows, pass.steps.uniform, fill, done);
  }

  // The backward through time: the steps of `pass` from its last to its first. Each step's
  // product first adds to `dh` what the step after it sent back, from that step's rows of
  // `d_pre` (the product's input; none before the last step), then its pointwise step writes its
  // own rows of d_pre; a last product gives the gradient of h0, unless `to_h0` is false (dh is
  // then left without it). plan(step, after, rows_after) -> Step<Args>, where (after,
  // rows_after) are the rows the step's product reads: passed on as its `in`, or multiplied by
  // plan itself where other work must come between (then in = null). done(s), where given, once
  // the s-th step processed (the last first) has written its rows.
  template <typename Plan>
  void loop_back(const Pass& pass, const Tensor& d_pre, void* dh, const Plan& plan,
                 bool to_h0 = true, const cpu::StepDone& done = {}) const {
    const void* after = nullptr;
    int64_t rows_after = 0;
    const auto last_first = [&](int64_t s) {
      const int64_t step = pass.steps.T - 1 - s;
      const auto planned = plan(step, after, rows_after);
      after = at_row(d_pre, pass.first_row(step)), rows_after = pass.batch(step);
      return planned;
    };
    loop(pass, last_first, [&](int64_t s) {
      if (done) done(s);
    });
    if (to_h0) product(after, rows_after, dh);
  }

  // The product alone (none when `in` is null).
  void product(const void* in, int64_t rows, void* out) const;

 private:
  cpu::Product fused(const void* in, int64_t rows, void* out) const {
    const void* bias = bias_.defined() ? bias_.data_ptr() : nullptr;
    return cpu::Product{&panels_, packed_.data_ptr(), in, out, rows, accumulate_, bias};
  }

  Tensor w_, packed_;  // packed_: defined on the fused path only
  Tensor bias_;        // the biases added in the fused product: defined there only
  Tensor input_, input_packed_;  // where the loop projects the input: the input, packed W_ih
  cpu::Panels input_panels_{};
  Backend backend_;
  int64_t gates_;
  bool transposed_, accumulate_;
  cpu::Panels panels_{};
#ifdef FUSEDRNN_WITH_CUDA
  std::unique_ptr<cuda::StepGemm> step_gemm_;  // on CUDA tensors only
#endif
};

}  // namespace fusedrnn
