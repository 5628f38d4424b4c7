// The double backward's per-step math (fusedrnn/second_order.py, layer/second_order.cpp), for
// one hidden unit of one batch row, in the arithmetic type A.
//
// The pass has two loops. Forward in time, the layer's tangents along the incoming gradients
// (`*_dot`). Backward in time, the first-order backward and its own tangent (`*_tan`): every
// backward product d = a * b then gains d_tan = a * b_tan + a_dot * b. The factors a (`e`, `k1`
// here) and their tangents are computed for all steps at once before each loop.
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
// Forward: the tangents of c and of the cell output m = o tanh(c), from the gate
// pre-activations' tangents pre_dot (i, f, g, o), e = d_act * [g, c_prev, i, tanh(c)] and
// k1 = o (1 - tanh(c)^2): c_dot = i_dot g + f_dot c_prev + i g_dot + f c_dot_prev.
template <typename A> struct LSTMTangent {
  A c_dot, m_dot;
};

template <typename A>
FUSEDRNN_HD LSTMTangent<A> lstm_tangent(const A pre_dot[4], const A e[4], A k1, A f,
                                        A c_dot_prev) {
  const A c_dot = pre_dot[0] * e[0] + pre_dot[1] * e[1] + pre_dot[2] * e[2] + f * c_dot_prev;
  return {c_dot, pre_dot[3] * e[3] + k1 * c_dot};
}

// Backward: the gradient reaching c (dc = dm k1 + dc_in, where dc_in is dc_{t+1} f_{t+1} or
// c_n's gradient) and the gate gradients dz = e * [dc, dc, dc, dm], each with its tangent.
template <typename A> struct LSTMBackwardTangent {
  WithTangent<A> dc, dz[4];
};

template <typename A>
FUSEDRNN_HD LSTMBackwardTangent<A> lstm_backward_tangent(WithTangent<A> dm, A k1, A k1_dot,
                                                         WithTangent<A> dc_in, const A e[4],
                                                         const A e_dot[4]) {
  LSTMBackwardTangent<A> r;
  const WithTangent<A> from_m = product(k1, k1_dot, dm.value, dm.tangent);
  r.dc = {from_m.value + dc_in.value, from_m.tangent + dc_in.tangent};
  for (int k = 0; k < 3; ++k) r.dz[k] = product(e[k], e_dot[k], r.dc.value, r.dc.tangent);
  r.dz[3] = product(e[3], e_dot[3], dm.value, dm.tangent);
  return r;
}

// ---- GRU -----------------------------------------------------------------------------------
// Forward: with x*_dot, h*_dot the tangents of x W_ih^T + b_ih and h W_hh^T + b_hh,
//   r_dot = d_r (xr_dot + hr_dot), z_dot = d_z (xz_dot + hz_dot),
//   n_dot = d_n (xn_dot + r_dot hn + r hn_dot),
//   h_dot = z_dot (h_prev - n) + (1 - z) n_dot + z h_dot_prev.
template <typename A> struct GRUTangent {
  A r_dot, z_dot, n_dot, h_dot;
};

template <typename A>
FUSEDRNN_HD GRUTangent<A> gru_tangent(const A x_dot[3], const A h_dot_gates[3], A d_r, A d_z,
                                      A d_n, A r, A z, A hn, A h_prev_minus_n, A h_dot_prev) {
  GRUTangent<A> out;
  out.r_dot = d_r * (x_dot[0] + h_dot_gates[0]);
  out.z_dot = d_z * (x_dot[1] + h_dot_gates[1]);
  out.n_dot = d_n * (x_dot[2] + out.r_dot * hn + r * h_dot_gates[2]);
  out.h_dot = out.z_dot * h_prev_minus_n + (A(1) - z) * out.n_dot + z * h_dot_prev;
  return out;
}

// Backward: the gradient reaching h_{t-1} from step t, dh_{t-1} = (d(h gates) W_hh) + dh_t z_t
// (the first term a matrix product, passed in with its tangent), with its tangent.
template <typename A>
FUSEDRNN_HD WithTangent<A> gru_into_previous(WithTangent<A> through_w_hh, WithTangent<A> dh,
                                             A z, A z_dot) {
  const WithTangent<A> direct = product(z, z_dot, dh.value, dh.tangent);
  return {through_w_hh.value + direct.value, through_w_hh.tangent + direct.tangent};
}

}  // namespace second_order
}  // namespace FUSEDRNN_ISA
}  // namespace fusedrnn
