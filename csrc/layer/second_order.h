// The two loops over time of the double backward's pass (fusedrnn/second_order.py), for each
// cell: the layer's tangents forward in time, then the first-order backward and its own tangent
// backward in time. The Python side computes what is parallel in time (the projections of the
// tangents, the weight gradients) for all steps at once; each step here is one or two matrix
// products and one pass over the units (core/second_order_steps.h: a loop on the CPU, a kernel
// on CUDA), which reads the forward's saved activations.
//
// Called from Python past the dispatcher, as internals of the double backward, which takes
// them only for plain tensors outside dispatch modes. Every tensor is contiguous, on one
// device and of one floating dtype; `*_dot` are tangents along the incoming gradients, `grads`
// [2, ...] holds a backward quantity and its tangent. Outputs are written into the tensors
// passed for them.
//
// Sequences are padded batches [T, B, W] as written below, or with batch_sizes (a
// PackedSequence's) its rows [rows, W], in the layer's own order: a reverse layer's sequences
// each reversed along its own length. [2, T, B, W] buffers are then [2, rows, W]; h_n's and
// c_n's gradients enter at each sequence's last step.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace fusedrnn {

using at::Tensor;
using OptionalTensor = std::optional<Tensor>;

// pre_dot [T, B, 4H]: in, the gate pre-activations' tangents but the recurrent term; out,
// complete. gates [T, B, 4H] (activated), cells, tanh_cells [T, B, H], c0 [B, H]: the forward's;
// w_hh [4H, P]; h0_dot [B, P], c0_dot [B, H]; w_hr [P, H] and m_w_hr_dot [T, B, P]
// (m W_hr_dot^T) with a projection.
// Out: c_dot, m_dot [T, B, H], h_dot [T, B, P] (m_dot itself without a projection).
void lstm_tangent_steps(const Tensor& pre_dot, const Tensor& gates, const Tensor& cells,
                        const Tensor& tanh_cells, const Tensor& c0, const Tensor& w_hh,
                        const OptionalTensor& h0_dot, const OptionalTensor& c0_dot,
                        const OptionalTensor& w_hr, const OptionalTensor& m_w_hr_dot,
                        const Tensor& c_dot, const Tensor& m_dot, const Tensor& h_dot,
                        const OptionalTensor& batch_sizes);

// u_y [T, B, P], u_hn [B, P], u_cn [B, H]: the output gradients; u_*_dot their tangents (none:
// zero). The first-order backward is linear in u, so its tangent along u_dot is the backward of
// u_dot: another output gradient's first-order backward rides along, at no product of its own.
// gates, pre_dot (complete), cells, tanh_cells, c0, c_dot, c0_dot as lstm_tangent_steps has
// them; w_hh(_dot) [4H, P], w_hr(_dot) [P, H].
// Out: grads [2, T, B, 4H] (dz, dz'), dh_all [2, T, B, P] (dh, dh'; with a projection), dc_first
// [2, B, H] (dc, dc' of step 0).
void lstm_backward_tangent_steps(const Tensor& u_y, const OptionalTensor& u_hn,
                                 const OptionalTensor& u_cn, const OptionalTensor& u_y_dot,
                                 const OptionalTensor& u_hn_dot,
                                 const OptionalTensor& u_cn_dot, const Tensor& gates,
                                 const Tensor& pre_dot, const Tensor& cells,
                                 const Tensor& tanh_cells, const Tensor& c0, const Tensor& c_dot,
                                 const OptionalTensor& c0_dot, const Tensor& w_hh,
                                 const OptionalTensor& w_hh_dot, const OptionalTensor& w_hr,
                                 const OptionalTensor& w_hr_dot, const Tensor& grads,
                                 const OptionalTensor& dh_all, const Tensor& dc_first,
                                 const OptionalTensor& batch_sizes);

// x_gates_dot [T, B, 3H]; h_gates_dot [T, B, 3H]: in, but the recurrent term, out, complete;
// saved [T, B, 4H] (the forward's r, z, n, hn), h_prev [T, B, H]; w_hh [3H, H]; h0_dot [B, H].
// Out: rz_dot [T, B, 2H], n_dot, h_dot [T, B, H].
void gru_tangent_steps(const Tensor& x_gates_dot, const Tensor& h_gates_dot, const Tensor& saved,
                       const Tensor& h_prev, const Tensor& w_hh, const OptionalTensor& h0_dot,
                       const Tensor& rz_dot, const Tensor& n_dot, const Tensor& h_dot,
                       const OptionalTensor& batch_sizes);

// u_y [T, B, H], u_hn [B, H] and their tangents u_*_dot (as the LSTM's); saved, h_prev,
// rz_dot, n_dot, h_gates_dot as gru_tangent_steps has them, h_prev_dot [T, B, H]; w_hh(_dot)
// [3H, H].
// Out: grads [2, T, B, 4H] (the gradients of [r pre, z pre, hn, n pre] and their tangents),
// dh_first [2, B, H] (dh, dh' of step 0).
void gru_backward_tangent_steps(const Tensor& u_y, const OptionalTensor& u_hn,
                                const OptionalTensor& u_y_dot, const OptionalTensor& u_hn_dot,
                                const Tensor& saved, const Tensor& h_prev, const Tensor& rz_dot,
                                const Tensor& n_dot, const Tensor& h_gates_dot,
                                const Tensor& h_prev_dot, const Tensor& w_hh,
                                const OptionalTensor& w_hh_dot, const Tensor& grads,
                                const Tensor& dh_first, const OptionalTensor& batch_sizes);

// pre_dot [T, B, H]: in, but the recurrent term, out, complete; d_act [T, B, H]; w_hh [H, H];
// h0_dot [B, H]. Out: h_dot [T, B, H].
void rnn_tangent_steps(const Tensor& pre_dot, const Tensor& d_act, const Tensor& w_hh,
                       const OptionalTensor& h0_dot, const Tensor& h_dot,
                       const OptionalTensor& batch_sizes);

// u_y [T, B, H], u_hn [B, H] and their tangents u_*_dot (as the LSTM's); d_act, d_act_dot
// [T, B, H] (none for relu: its derivative is constant where defined); w_hh(_dot) [H, H].
// Out: grads [2, T, B, H] (d pre, its tangent).
void rnn_backward_tangent_steps(const Tensor& u_y, const OptionalTensor& u_hn,
                                const OptionalTensor& u_y_dot, const OptionalTensor& u_hn_dot,
                                const Tensor& d_act, const OptionalTensor& d_act_dot,
                                const Tensor& w_hh, const OptionalTensor& w_hh_dot,
                                const Tensor& grads, const OptionalTensor& batch_sizes);

}  // namespace fusedrnn
