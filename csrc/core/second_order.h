// The double backward's per-step math (fusedrnn/second_order.py, layer/second_order.cpp), for
// one hidden unit of one batch row, in the arithmetic type A.
//
// The pass has two loops. Forward in time, the layer's tangents along the incoming gradients
// (`*_dot`). Backward in time, the first-order backward and its own tangent: every backward
// product d = a * b then gains the tangent a * b_tan + a_dot * b. The factors a come from the
// forward's saved activations and the tangents, unit by unit, as the loops reach them.
#pragma once

#include "gates.h"

namespace fusedrnn {
inline namespace FUSEDRNN_ISA {
namespace second_order {

// A backward quantity and its tangent.
template <typename A> struct WithTangent {
  A value, tangent;
};

// The product rule: (a * b, its tangent) from a, b and their tangents.
template <typename A>
FUSEDRNN_HD WithTangent<A> product(A a, A a_dot, A b, A b_tan) {
  return {a * b, a * b_tan + a_dot * b};
}

// ---- LSTM ----------------------------------------------------------------------------------
// One unit at one step: a = the activated gates i, f, g, o (what the forward saves), their
// tangents a_dot = act'(pre) * pre_dot, the cell c and tanh(c), the previous cell, with
// tangents.
template <typename A> struct LSTMUnit {
  A a[4], a_dot[4];
  A c, c_dot, tanh_c, c_prev, c_prev_dot;
};

// The gates' derivatives from their outputs: sigmoid's for i, f, o, tanh's for g.
template <typename A> FUSEDRNN_HD A lstm_gate_derivative(int q, A a) {
  return q == 2 ? gates::d_tanh(a) : gates::d_sigmoid(a);
}

// Forward: the tangents of c and of the cell output m = o tanh(c), from u's gates, their
// tangents and the previous cell's tangent: c_dot = i_dot g + f_dot c_prev + i g_dot + f
// c_dot_prev, m_dot = o_dot tanh(c) + o (1 - tanh(c)^2) c_dot.
template <typename A> struct LSTMTangent {
  A c_dot, m_dot;
};

template <typename A> FUSEDRNN_HD LSTMTangent<A> lstm_tangent(const LSTMUnit<A>& u) {
  const A* a = u.a;
  const A* a_dot = u.a_dot;
  const A c_dot = a_dot[0] * a[2] + a_dot[1] * u.c_prev + a[0] * a_dot[2] + a[1] * u.c_prev_dot;
  return {c_dot, a_dot[3] * u.tanh_c + a[3] * gates::d_tanh(u.tanh_c) * c_dot};
}

// Backward: the first-order step (dc = dm k1 + dc_in, dz = e * [dc, dc, dc, dm] with
// e = act'(pre) * [g, c_prev, i, tanh(c)] and k1 = o (1 - tanh(c)^2)), each result with its
// tangent. dm: the gradient reaching m; dc_in: dc_{t+1} f_{t+1}, or c_n's gradient.
template <typename A> struct LSTMBackwardTangent {
  WithTangent<A> dc, dz[4];
};

template <typename A>
FUSEDRNN_HD LSTMBackwardTangent<A> lstm_backward_tangent(const LSTMUnit<A>& u, WithTangent<A> dm,
                                                         WithTangent<A> dc_in) {
  const A* a = u.a;
  const A* a_dot = u.a_dot;
  const A d_tanh_c = gates::d_tanh(u.tanh_c), tanh_c_dot = d_tanh_c * u.c_dot;
  const A k1 = a[3] * d_tanh_c;
  const A k1_dot = a_dot[3] * d_tanh_c - A(2) * a[3] * u.tanh_c * tanh_c_dot;
  const A of[4] = {a[2], u.c_prev, a[0], u.tanh_c};  // what each gate's gradient is taken of
  const A of_dot[4] = {a_dot[2], u.c_prev_dot, a_dot[0], tanh_c_dot};
  LSTMBackwardTangent<A> r;
  const WithTangent<A> from_m = product(k1, k1_dot, dm.value, dm.tangent);
  r.dc = {from_m.value + dc_in.value, from_m.tangent + dc_in.tangent};
  for (int q = 0; q < 4; ++q) {
    // e_q = d_q * of_q; d_q's tangent: a_dot (1 - 2a) for a sigmoid, -2 g g_dot for tanh.
    const A d = lstm_gate_derivative(q, a[q]);
    const A d_dot = q == 2 ? A(-2) * a[q] * a_dot[q] : a_dot[q] * (A(1) - A(2) * a[q]);
    const WithTangent<A> grad = q == 3 ? dm : r.dc;
    r.dz[q] = product(d * of[q], d_dot * of[q] + d * of_dot[q], grad.value, grad.tangent);
  }
  return r;
}

// ---- GRU -----------------------------------------------------------------------------------
// One unit at one step: r, z, n, hn = h W_hn^T + b_hn (what the forward saves) and h_prev,
// with their tangents.
template <typename A> struct GRUUnit {
  A r, z, n, hn, h_prev;
  A r_dot, z_dot, n_dot, hn_dot, h_prev_dot;
};

// Forward: with x*_dot, h*_dot the tangents of x W_ih^T + b_ih and h W_hh^T + b_hh,
//   r_dot = r' (xr_dot + hr_dot), z_dot = z' (xz_dot + hz_dot),
//   n_dot = n' (xn_dot + r_dot hn + r hn_dot),
//   h_dot = z_dot (h_prev - n) + (1 - z) n_dot + z h_dot_prev.
// u: the primal values; of the tangents only h_prev_dot is read. -> r_dot, z_dot, n_dot, h_dot.
template <typename A> struct GRUTangent {
  A r_dot, z_dot, n_dot, h_dot;
};

template <typename A>
FUSEDRNN_HD GRUTangent<A> gru_tangent(const GRUUnit<A>& u, const A x_dot[3],
                                      const A h_gates_dot[3]) {
  GRUTangent<A> out;
  out.r_dot = gates::d_sigmoid(u.r) * (x_dot[0] + h_gates_dot[0]);
  out.z_dot = gates::d_sigmoid(u.z) * (x_dot[1] + h_gates_dot[1]);
  out.n_dot = gates::d_tanh(u.n) * (x_dot[2] + out.r_dot * u.hn + u.r * h_gates_dot[2]);
  out.h_dot = out.z_dot * (u.h_prev - u.n) + (A(1) - u.z) * out.n_dot + u.z * u.h_prev_dot;
  return out;
}

// Backward: the gradients of [r pre, z pre, hn, n pre] are e * dh, where (gates::gru_backward)
//   e = [a1 a3, a2, a1 r, a1], a1 = (1 - z) n', a2 = (h_prev - n) z', a3 = hn r';
// each with its tangent, into grads[4].
template <typename A>
FUSEDRNN_HD void gru_backward_tangent(const GRUUnit<A>& u, WithTangent<A> dh,
                                      WithTangent<A> grads[4]) {
  const A d_r = gates::d_sigmoid(u.r), d_z = gates::d_sigmoid(u.z), d_n = gates::d_tanh(u.n);
  const A a1 = (A(1) - u.z) * d_n, a2 = (u.h_prev - u.n) * d_z, a3 = u.hn * d_r;
  const A a1_dot = -u.z_dot * d_n - A(2) * (A(1) - u.z) * u.n * u.n_dot;
  const A a2_dot = (u.h_prev_dot - u.n_dot) * d_z
                   + (u.h_prev - u.n) * u.z_dot * (A(1) - A(2) * u.z);
  const A a3_dot = u.hn_dot * d_r + u.hn * u.r_dot * (A(1) - A(2) * u.r);
  const A e[4] = {a1 * a3, a2, a1 * u.r, a1};
  const A e_dot[4] = {a1_dot * a3 + a1 * a3_dot, a2_dot, a1_dot * u.r + a1 * u.r_dot, a1_dot};
  for (int q = 0; q < 4; ++q) grads[q] = product(e[q], e_dot[q], dh.value, dh.tangent);
}

// The gradient reaching h_{t-1} from step t, dh_{t-1} = (d(h gates) W_hh) + dh_t z_t (the first
// term a matrix product, passed in with its tangent), with its tangent.
template <typename A>
FUSEDRNN_HD WithTangent<A> gru_into_previous(WithTangent<A> through_w_hh, WithTangent<A> dh,
                                             A z, A z_dot) {
  const WithTangent<A> direct = product(z, z_dot, dh.value, dh.tangent);
  return {through_w_hh.value + direct.value, through_w_hh.tangent + direct.tangent};
}

}  // namespace second_order
}  // namespace FUSEDRNN_ISA
}  // namespace fusedrnn
