// The GEMMs over a whole sequence, outside the loop over time: the input projection before it,
// the gradients through the input and the weight gradients after it.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "prepare.h"
#include "sequence.h"

namespace fusedrnn {

// x W_ih^T + bias (+ bias_2) for all time steps at once, for x and W_ih the call's input and
// w_ih, into `out` (laid out like the input, G*H wide).
Tensor project_input(const LayerCall& call, const OptionalTensor& bias,
                     const OptionalTensor& bias_2, Tensor out);

// Sum over steps of d_pre[t]^T h_{t-1}: [G*H, H], for d_pre the gradient of h_{t-1} W_hh^T laid
// out like the output, h_{t-1} the call's h0 or a row of `output`.
Tensor grad_w_hh(const LayerCall& call, const Tensor& d_pre, const Tensor& output);

// grad_input = d_x W_ih and grad_w_ih = d_x^T x (empty, not computed, unless with_w_ih), for
// d_x the gradient of x W_ih^T laid out like the input, x and W_ih the call's input and w_ih.
std::tuple<Tensor, Tensor> grads_through_input(const LayerCall& call, const Tensor& d_x,
                                               bool with_w_ih);

// With bfloat16 products (LayerCall::product_dtype), the two above run on bfloat16 operands and
// return bfloat16 gradients, as torch.nn's bfloat16 layers do; their d_pre or d_x may come
// rounded already (gemm_operand), for a gradient both take.

// d as the two above take it: rounded to bfloat16 where they run on bfloat16 operands (a
// temporary of the call), else d itself.
Tensor gemm_operand(const LayerCall& call, const Tensor& d);

// The sum of d_pre over all rows: the bias gradient, or empty without bias.
Tensor bias_grad(const Tensor& d_pre, bool has_bias);

}  // namespace fusedrnn
