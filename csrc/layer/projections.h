// The GEMMs over a whole sequence, outside the loop over time: the input projection before it,
// the gradients through the input and the weight gradients after it.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "sequence.h"

namespace fusedrnn {

// x W_ih^T + bias (+ bias_2) for all time steps at once, into `out` (laid out like the input,
// G*H wide).
Tensor project_input(const Tensor& input, const Tensor& w_ih, const OptionalTensor& bias,
                     const OptionalTensor& bias_2, Tensor out);

// Sum over steps of d_pre[t]^T h_{t-1}: [G*H, H], for d_pre the gradient of h_{t-1} W_hh^T laid
// out like the output.
Tensor grad_w_hh(const Pass& pass, const Tensor& d_pre, const Tensor& h0, const Tensor& output);

// grad_input = d_x W_ih and grad_w_ih = d_x^T x, for d_x the gradient of x W_ih^T laid out like
// the input.
std::tuple<Tensor, Tensor> grads_through_input(const Tensor& d_x, const Tensor& input,
                                               const Tensor& w_ih);

// The sum of d_pre over all rows: the bias gradient, or empty without bias.
Tensor bias_grad(const Tensor& d_pre, bool has_bias);

}  // namespace fusedrnn
