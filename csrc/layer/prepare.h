// The part every op shares before its loop: checking its arguments, once, with clear messages,
// and preparing them as the kernels read them. The six ops and their pairs start here.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceGuard.h>

#include <optional>
#include <tuple>

#include "../core/steps.h"
#include "backend.h"
#include "scratch.h"
#include "sequence.h"

namespace fusedrnn {

// The kernels' name for a tensor's dtype; raises for any other.
Dtype dtype_of(const Tensor& t);

// One op call's arguments for a cell of `gates` gate blocks, checked (shapes, dtypes, devices),
// on the input's device (a DeviceGuard for the call), contiguous, and, for float16 and bfloat16
// on the CPU, widened to float32: the fused CPU recurrence has float32 and float64 kernels, and a
// loop of half-precision GEMMs and scalar gate math ran 5-8x slower than torch.nn's oneDNN path.
// Widening is exact; results() rounds each result to the caller's dtype once, at the end (what
// oneDNN's bfloat16 LSTM also computes in: float32 arithmetic on half-precision inputs). On a CPU
// with bfloat16 dot products, a bfloat16 call's large products run on them (product_dtype).
class LayerCall {
 public:
  LayerCall(const char* op, int64_t gates, const Tensor& input, const OptionalTensor& batch_sizes,
            const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh, const OptionalTensor& b_ih,
            const OptionalTensor& b_hh, const OptionalTensor& w_hr, bool reverse);
  LayerCall(const LayerCall&) = delete;
  LayerCall& operator=(const LayerCall&) = delete;

  // Another argument of this shape (c0, or a tensor the forward saved), prepared the same way.
  Tensor argument(const char* name, const Tensor& t, at::IntArrayRef shape) const;
  // A gradient from autograd, prepared the same way; undefined stays undefined.
  Tensor gradient(const char* name, const OptionalTensor& g, at::IntArrayRef shape) const;
  // The same, as a fresh buffer to accumulate into: zeros where undefined.
  Tensor gradient_or_zeros(const char* name, const OptionalTensor& g,
                           at::IntArrayRef shape) const;

  // A result's buffer laid out like the input, `width` wide: a temporary of a widened call,
  // whose results() returns a rounded copy of it (fresh ones were faulted in page by page on
  // every call: a fifth of a bfloat16 LSTM's input projection in training); else a new tensor.
  Tensor result_like(int64_t width) const;

  // What a forward keeps for its backward (the LSTM's gates and cells, the GRU's activations),
  // laid out like the input, `width` wide, in the dtype the call computes in; on the CPU from
  // the pool of temporaries, to which its block returns once autograd frees it (scratch::kept).
  // A widened call thus keeps float32, which its backward reads back as the forward wrote it:
  // rounding it to the caller's dtype and widening it again were two passes over a 4H-wide
  // buffer (with a third, 20 ms of a bfloat16 LSTM's 148 ms training step at T=100 B=64
  // H=512, on AMX).
  Tensor workspace_like(int64_t width) const {
    return scratch::kept(sequence_sizes(input, width), input.options());
  }
  // Such a tensor passed back to the backward, checked (shape, device, and the dtype the call
  // computes in), as it is.
  Tensor workspace(const char* name, const Tensor& t, at::IntArrayRef shape) const;

  // A temporary of the call (layer/scratch.h), in `dtype`.
  Tensor temporary(at::IntArrayRef sizes, at::ScalarType dtype) const {
    return temporaries_.take(sizes, dtype);
  }

  // The op's results in the caller's dtype (not its workspace: workspace_like).
  template <typename... Results>
  std::tuple<Results...> results(std::tuple<Results...> results) const {
    if (caller_dtype_ != input.scalar_type()) {
      std::apply([&](auto&... t) { ((t = t.defined() ? t.to(caller_dtype_) : t), ...); },
                 results);
    }
    return results;
  }

  at::TensorOptions options() const { return input.options(); }
  Pass pass() const { return Pass{steps, reverse}; }

  const char* op;
  Layout steps;
  int64_t B, I, H;
  int64_t P;  // width of the hidden state: the LSTM's projection size, else H
  bool reverse;
  Tensor input, h0, w_ih, w_hh, w_hr;  // w_hr: undefined without a projection
  // The caller's w_ih and w_hh as passed, before widening or a contiguous copy: what the cache
  // of packed weights compares (packed_weights.h), as a copy made for the call is new each time.
  Tensor w_ih_passed, w_hh_passed;
  OptionalTensor b_ih, b_hh;
  Backend backend;  // runs the loop over time
  // What the large products take their operands in: bfloat16 for bfloat16 calls on a CPU with
  // bfloat16 dot products (cpu/isa.h: has_bf16_products), which round the state and the gate
  // gradients to bfloat16 there (the weights and input are bfloat16 already), as torch.nn's
  // oneDNN path does; else the dtype computed in.
  Dtype product_dtype;

 private:
  Tensor prepared(const Tensor& t) const;

  at::ScalarType caller_dtype_;
  c10::DeviceGuard guard_;
  // The call's temporaries: its half-precision arguments widened, and what temporary() gives.
  mutable Scratch temporaries_;
};

}  // namespace fusedrnn
