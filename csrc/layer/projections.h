// The GEMMs over a whole sequence, outside the loop over time: the input projection before it,
// the gradients through the input and the weight gradients after it.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "prepare.h"
#include "sequence.h"

namespace fusedrnn {

// Whether the fused CPU loop projects each step's input itself, beside its recurrent product
// (Recurrence: a forward whose gates add up x W_ih^T and h W_hh^T), rather than project_input
// for the whole sequence before it. The step's gates then stay in the cache (inference keeps
// two steps' worth), and the whole-sequence product's passes through memory and its threads'
// fork and join are gone. On a Zen 3, interleaved in one process, LSTM inference 1.05x-1.14x
// at T=48 B=32 H=128 and T=100 B=16 H=64 (one thread and two), 1.16x-1.25x at B=64 H=32 and
// H=256, 1.02x-1.06x at B=8 H=256; the RNN 1.07x-1.09x; float64 1.08x-1.14x; training
// 0.96x-1.13x. It lost at B=1 (0.91x at H=64, 0.72x at H=256: each step streams both matrices
// for one row) and at H=512 (0.91x) (benchmarks/NOTES.md, ninth session). On AVX-512, float32
// layers of up to 64 features and units from 16 rows, and up to 128 from 32 rows where the
// gates are not kept (`gates_kept`: the loop writes every step's gates, as an LSTM in training);
// bfloat16 layers on AMX from 4 to 32 rows a step (projections.cpp).
bool projects_in_loop(const LayerCall& call, bool gates_kept);

// x W_ih^T + bias (+ bias_2) for all time steps at once, for x and W_ih the call's input and
// w_ih, into `out` (laid out like the input, G*H wide). Where the product runs on packed W_ih,
// the packing comes from the cache of packed weights (packed_weights.h).
Tensor project_input(const LayerCall& call, const OptionalTensor& bias,
                     const OptionalTensor& bias_2, Tensor out);

// Whether project_input may run in chunks of rows, project_input_rows (beside_loop.h: beside
// the loop): where it runs on the BLAS, so that a chunk costs what its rows do (the fused
// product's kernels pack W_ih for each call).
bool projects_by_rows(const LayerCall& call);

// project_input for rows [row, row + rows) of the input and `out` alone, where projects_by_rows.
void project_input_rows(const LayerCall& call, const OptionalTensor& bias,
                        const OptionalTensor& bias_2, const Tensor& out, int64_t row,
                        int64_t rows);

// A gradient laid out like the input, [..., G*H], as the GEMMs below take it: `d` itself, and
// where they run on bfloat16 operands (with bfloat16 products, LayerCall::product_dtype, as
// torch.nn's bfloat16 layers do; they then return bfloat16 gradients), d rounded to bfloat16
// once for all of them, in the layouts their GEMMs read fastest (temporaries of the call):
// `rows`, d's own, and `columns`, a transposed [G*H, rows] copy for the weight gradients of
// wide gates (projections.cpp). Each is made only where a GEMM reads it. `sum`: d summed over
// its rows, where the pass that made `columns` added it up (with_sum).
struct GemmOperand {
  Tensor d, rows, columns, sum;
};

// d as grads_through_input (for_input) and grad_w_hh take it, the weight gradients wanted or not,
// and bias_grad, with_sum where it will want d's sum.
GemmOperand gemm_operand(const LayerCall& call, const Tensor& d, bool for_input,
                         bool weight_grads, bool with_sum);

// Sum over steps of d_pre[t]^T h_{t-1}: [G*H, H], for d_pre the gradient of h_{t-1} W_hh^T laid
// out like the output, h_{t-1} the call's h0 or a row of `output`.
Tensor grad_w_hh(const LayerCall& call, const GemmOperand& d_pre, const Tensor& output);

// grad_input = d_x W_ih and grad_w_ih = d_x^T x (empty, not computed, unless with_w_ih), for
// d_x the gradient of x W_ih^T laid out like the input, x and W_ih the call's input and w_ih.
std::tuple<Tensor, Tensor> grads_through_input(const LayerCall& call, const GemmOperand& d_x,
                                               bool with_w_ih);

// The sum of d over all rows: the bias gradient, or empty without bias.
Tensor bias_grad(const GemmOperand& d, bool has_bias);

}  // namespace fusedrnn
