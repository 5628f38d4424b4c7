// The two loops over time of the double backward's pass (fusedrnn/second_order.py), for each
// cell, on the CPU: the layer's tangents forward in time, then the first-order backward and its
// own tangent backward in time. The Python side computes everything parallel in time (the
// factors e, k1 and their tangents, the weight gradients) for all steps at once; each step here
// is one or two matrix products and one pass over the units (core/second_order.h).
//
// Called from Python past the dispatcher, as internals of the double backward, which takes
// them only for plain CPU tensors outside dispatch modes. Every tensor is contiguous and of one
// floating dtype; `*_dot` are tangents along the incoming gradients, `grads` [2, ...] holds a
// backward quantity and its tangent. Outputs are written into the tensors passed for them.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace fusedrnn {

using at::Tensor;
using OptionalTensor = std::optional<Tensor>;

// pre_dot [T, B, 4H]: in, the gate pre-activations' tangents but the recurrent term; out,
// complete. e [T, B, 4H], k1, f [T, B, H]: the step factors; w_hh [4H, P]; h0_dot [B, P],
// c0_dot [B, H]; w_hr [P, H] and m_w_hr_dot [T, B, P] (m W_hr_dot^T) with a projection.
// Out: c_dot, m_dot [T, B, H], h_dot [T, B, P] (m_dot itself without a projection).
void lstm_tangent_steps(const Tensor& pre_dot, const Tensor& e, const Tensor& k1,
                        const Tensor& f, const Tensor& w_hh, const OptionalTensor& h0_dot,
                        const OptionalTensor& c0_dot, const OptionalTensor& w_hr,
                        const OptionalTensor& m_w_hr_dot, const Tensor& c_dot,
                        const Tensor& m_dot, const Tensor& h_dot);

// u_y [T, B, P], u_hn [B, P], u_cn [B, H]: the output gradients; e, e_dot [T, B, 4H]; k1, k1_dot,
// f, f_dot [T, B, H]; w_hh(_dot) [4H, P], w_hr(_dot) [P, H].
// Out: grads [2, T, B, 4H] (dz, dz'), dh_all [2, T, B, P] (dh, dh'; with a projection), dc_first
// [2, B, H] (dc, dc' of step 0).
void lstm_backward_tangent_steps(const Tensor& u_y, const OptionalTensor& u_hn,
                                 const OptionalTensor& u_cn, const Tensor& e, const Tensor& e_dot,
                                 const Tensor& k1, const Tensor& k1_dot, const Tensor& f,
                                 const Tensor& f_dot, const Tensor& w_hh,
                                 const OptionalTensor& w_hh_dot, const OptionalTensor& w_hr,
                                 const OptionalTensor& w_hr_dot, const Tensor& grads,
                                 const OptionalTensor& dh_all, const Tensor& dc_first);

// x_gates_dot [T, B, 3H]; h_gates_dot [T, B, 3H]: in, but the recurrent term, out, complete;
// rz, d_rz [T, B, 2H] (r, z and their derivatives); h_gates [T, B, 3H] (hn at 2H); d_n,
// h_prev_minus_n [T, B, H]; w_hh [3H, H]; h0_dot [B, H].
// Out: rz_dot [T, B, 2H], n_dot, h_dot [T, B, H].
void gru_tangent_steps(const Tensor& x_gates_dot, const Tensor& h_gates_dot, const Tensor& rz,
                       const Tensor& d_rz, const Tensor& h_gates, const Tensor& d_n,
                       const Tensor& h_prev_minus_n, const Tensor& w_hh,
                       const OptionalTensor& h0_dot, const Tensor& rz_dot, const Tensor& n_dot,
                       const Tensor& h_dot);

// u_y [T, B, H], u_hn [B, H]; e, e_dot [T, B, 4H]; rz, rz_dot [T, B, 2H]; w_hh(_dot) [3H, H].
// Out: grads [2, T, B, 4H] (e * dh and its tangent), dh_first [2, B, H] (dh, dh' of step 0).
void gru_backward_tangent_steps(const Tensor& u_y, const OptionalTensor& u_hn, const Tensor& e,
                                const Tensor& e_dot, const Tensor& rz, const Tensor& rz_dot,
                                const Tensor& w_hh, const OptionalTensor& w_hh_dot,
                                const Tensor& grads, const Tensor& dh_first);

// pre_dot [T, B, H]: in, but the recurrent term, out, complete; d_act [T, B, H]; w_hh [H, H];
// h0_dot [B, H]. Out: h_dot [T, B, H].
void rnn_tangent_steps(const Tensor& pre_dot, const Tensor& d_act, const Tensor& w_hh,
                       const OptionalTensor& h0_dot, const Tensor& h_dot);

// u_y [T, B, H], u_hn [B, H]; d_act, d_act_dot [T, B, H] (none for relu: its derivative is
// constant where defined); w_hh(_dot) [H, H]. Out: grads [2, T, B, H] (d pre, its tangent).
void rnn_backward_tangent_steps(const Tensor& u_y, const OptionalTensor& u_hn,
                                const Tensor& d_act, const OptionalTensor& d_act_dot,
                                const Tensor& w_hh, const OptionalTensor& w_hh_dot,
                                const Tensor& grads);

}  // namespace fusedrnn
