// The double backward's passes over the units (fusedrnn/second_order.py's loops over time,
// layer/second_order.cpp): for each loop, the argument struct of one step's pass, and element(),
// one unit of it (batch row b, hidden unit j), whose math is second_order.h. The CPU loop
// (layer/second_order.cpp) and the CUDA kernel (cuda/second_order.cu) both call exactly these.
// Framework-free, as steps.h: buffers contiguous and row-major, of the call's storage type T
// but where said (the arithmetic type A: AccumulateType<T>); step t is in the layer's own order,
// and where its rows lie is its StepRows.
#pragma once

#include "elements.h"
#include "second_order.h"

namespace fusedrnn {

// Where one step's rows lie in the sequence buffers, all [rows, W]: a padded [T, B, W] batch has
// rows = T B and step t's from row t B on; a PackedSequence's steps have fewer rows as its
// sequences end (its batch_sizes, never growing with t). Rows b >= after_batch end their
// sequence at this step: their final state's gradient enters here in a backward loop.
struct StepRows {
  int64_t at;           // the step's first row
  int64_t before;       // the first row of step t-1 (unread at the first step)
  int64_t after;        // of step t+1 (unread where after_batch is 0)
  int64_t after_batch;  // the rows of step t+1; 0 at the last step
  int64_t total;        // every step's rows: where a [2, rows, W] buffer's tangent half begins
  bool first;           // step 0: the previous states are the initial ones
};

// An LSTM layer's forward, as both of its loops read it.
struct LSTMSequence {
  const void* gates;       // [rows, 4H] the activated gates i, f, g, o
  const void* pre_dot;     // [rows, 4H] the pre-activations' tangents (complete up to step t)
  const void* cells;       // [rows, H]
  const void* tanh_cells;  // [rows, H]
  const void* c0;          // [B, H]
  const void* c0_dot;      // [B, H] c0's tangent, or null (zero)
  void* c_dot;             // [rows, H] the cells' tangents: the tangent loop writes step t's
};

// Forward in time: c_dot and m_dot (the tangent of the cell output o tanh(c)) of step t.
struct LSTMTangentStep {
  LSTMSequence seq;
  void* m_dot;  // [rows, H] out
  StepRows rows;
  int64_t batch, hidden;  // the step's rows, the hidden size
};

// Backward in time: step t's gate gradients and their tangents. The carried [2, B, H] buffers
// hold the value for row b at b H + j and its tangent `width` rows later (B, the first step's
// rows).
struct LSTMBackwardTangentStep {
  LSTMSequence seq;      // c_dot complete
  const void* dm;        // [2, B, H] the gradient reaching the cell output m_t, its tangent
  const void* u_cn;      // [B, H] c_n's gradient, or null (read where a sequence ends)
  const void* u_cn_dot;  // [B, H] its tangent, or null
  void* dc;              // [2, B, H] of type A: in, dc_{t+1} and its tangent; out, dc_t's
  void* dz;              // [2, rows, 4H] out: dz of step t, then (rows 4H later) its tangent
  StepRows rows;
  int64_t batch, hidden, width;
};

// Forward in time: the tangents of r, z, n and h at step t.
struct GRUTangentStep {
  const void* x_gates_dot;  // [rows, 3H] the tangent of x W_ih^T + b_ih
  const void* h_gates_dot;  // [rows, 3H] of h W_hh^T + b_hh (complete up to step t)
  const void* saved;        // [rows, 4H] the forward's r, z, n, hn
  const void* h_prev;       // [rows, H] h_{t-1} of each step
  const void* h_prev_dot;   // [B, H] h_{t-1}'s tangent, or null (zero)
  void* rz_dot;             // [rows, 2H] out
  void* n_dot;              // [rows, H] out
  void* h_dot;              // [rows, H] out
  StepRows rows;
  int64_t batch, hidden;
};

// Backward in time: the gradients of [r pre, z pre, hn, n pre] of step t, with tangents.
struct GRUBackwardTangentStep {
  const void* u_y;           // [rows, H] the output's gradient
  const void* u_hn;          // [B, H] h_n's, or null
  const void* u_y_dot;       // [rows, H] their tangents, or null
  const void* u_hn_dot;      // [B, H] or null
  const void* saved;         // as GRUTangentStep's
  const void* h_prev;
  const void* rz_dot;        // [rows, 2H], [rows, H]: GRUTangentStep's results
  const void* n_dot;
  const void* h_gates_dot;   // [rows, 3H] complete
  const void* h_prev_dot;    // [rows, H]
  const void* through_w_hh;  // [2, B, H] step t+1's h-gate gradients times W_hh, its tangent
  void* dh;                  // [2, B, H] of type A: in, dh_{t+1} and its tangent; out, dh_t's
  void* grads;               // [2, rows, 4H] out
  StepRows rows;
  int64_t batch, hidden, width;  // width: as LSTMBackwardTangentStep's
};

// Backward in time: the gradient of step t's pre-activation, with its tangent.
struct RNNBackwardTangentStep {
  const void* d_act;      // [rows, H] the activation's derivative
  const void* d_act_dot;  // [rows, H] its tangent, or null (relu's is zero)
  const void* dh;         // [2, B, H] the gradient reaching h_t, its tangent
  void* grads;            // [2, rows, H] out
  StepRows rows;
  int64_t batch, hidden, width;
};

#define FUSEDRNN_FOR_EACH_SECOND_ORDER_STEP(X)                                     \
  X(LSTMTangentStep) X(LSTMBackwardTangentStep) X(GRUTangentStep) X(GRUBackwardTangentStep) \
  X(RNNBackwardTangentStep)

namespace cuda {
#define FUSEDRNN_DECLARE_SECOND_ORDER_STEP(Args) \
  void second_order_step(Dtype dtype, const Args& args, cudaStream_t stream);
FUSEDRNN_FOR_EACH_SECOND_ORDER_STEP(FUSEDRNN_DECLARE_SECOND_ORDER_STEP)
#undef FUSEDRNN_DECLARE_SECOND_ORDER_STEP
}  // namespace cuda

inline namespace FUSEDRNN_ISA {
namespace second_order {

template <typename A> using Pair = WithTangent<A>;

// The LSTM unit (b, j) of a step; its c_dot only where with_c_dot (the tangent loop is
// computing it).
template <typename T, typename A>
FUSEDRNN_HD LSTMUnit<A> lstm_unit(const LSTMSequence& s, const StepRows& rows, int64_t b,
                                  int64_t j, int64_t H, bool with_c_dot) {
  const T* gates = static_cast<const T*>(s.gates);
  const T* pre_dot = static_cast<const T*>(s.pre_dot);
  const T* cells = static_cast<const T*>(s.cells);
  const T* c_dot = static_cast<const T*>(s.c_dot);
  const int64_t g = (rows.at + b) * 4 * H + j, at = (rows.at + b) * H + j;
  const int64_t k = b * H + j, before = (rows.before + b) * H + j;
  LSTMUnit<A> u;
  for (int q = 0; q < 4; ++q) {
    u.a[q] = load<A>(gates + g + q * H);
    u.a_dot[q] = lstm_gate_derivative(q, u.a[q]) * load<A>(pre_dot + g + q * H);
  }
  u.c = load<A>(cells + at);
  u.tanh_c = load<A>(static_cast<const T*>(s.tanh_cells) + at);
  u.c_dot = with_c_dot ? load<A>(c_dot + at) : A(0);
  u.c_prev = rows.first ? load<A>(static_cast<const T*>(s.c0) + k) : load<A>(cells + before);
  u.c_prev_dot = !rows.first ? load<A>(c_dot + before)
                 : s.c0_dot  ? load<A>(static_cast<const T*>(s.c0_dot) + k) : A(0);
  return u;
}

// dc_{t+1} f_{t+1} and its tangent, for dc = (dc_{t+1}, its tangent) of row b.
template <typename T, typename A>
FUSEDRNN_HD Pair<A> through_forget_gate(const LSTMSequence& s, const StepRows& rows, int64_t b,
                                        int64_t j, int64_t H, Pair<A> dc) {
  const int64_t g = (rows.after + b) * 4 * H + H + j;
  const A f = load<A>(static_cast<const T*>(s.gates) + g);
  const A f_dot = gates::d_sigmoid(f) * load<A>(static_cast<const T*>(s.pre_dot) + g);
  return product(f, f_dot, dc.value, dc.tangent);
}

// The GRU unit (row, j), its primal values; the tangents are the caller's to fill.
template <typename T, typename A>
FUSEDRNN_HD GRUUnit<A> gru_unit(const void* saved, const void* h_prev, int64_t row, int64_t j,
                                int64_t H) {
  const T* s = static_cast<const T*>(saved) + row * 4 * H + j;
  GRUUnit<A> u{};
  u.r = load<A>(s);
  u.z = load<A>(s + H);
  u.n = load<A>(s + 2 * H);
  u.hn = load<A>(s + 3 * H);
  u.h_prev = load<A>(static_cast<const T*>(h_prev) + row * H + j);
  return u;
}

}  // namespace second_order

template <typename T, typename A>
FUSEDRNN_HD void element(const LSTMTangentStep& s, int64_t b, int64_t j) {
  const int64_t at = (s.rows.at + b) * s.hidden + j;
  const auto r = second_order::lstm_tangent(
      second_order::lstm_unit<T, A>(s.seq, s.rows, b, j, s.hidden, false));
  store(static_cast<T*>(s.seq.c_dot) + at, r.c_dot);
  store(static_cast<T*>(s.m_dot) + at, r.m_dot);
}

template <typename T, typename A>
FUSEDRNN_HD void element(const LSTMBackwardTangentStep& s, int64_t b, int64_t j) {
  const int64_t H = s.hidden, k = b * H + j, tangent = s.width * H;
  A* dc = static_cast<A*>(s.dc);
  second_order::Pair<A> dc_in{A(0), A(0)};
  if (b >= s.rows.after_batch) {  // the sequence ends here
    if (s.u_cn) dc_in.value = load<A>(static_cast<const T*>(s.u_cn) + k);
    if (s.u_cn_dot) dc_in.tangent = load<A>(static_cast<const T*>(s.u_cn_dot) + k);
  } else {
    dc_in = second_order::through_forget_gate<T, A>(s.seq, s.rows, b, j, H,
                                                    {dc[k], dc[tangent + k]});
  }
  const T* dm = static_cast<const T*>(s.dm);
  const auto r = second_order::lstm_backward_tangent(
      second_order::lstm_unit<T, A>(s.seq, s.rows, b, j, H, true),
      {load<A>(dm + k), load<A>(dm + tangent + k)}, dc_in);
  T* dz = static_cast<T*>(s.dz) + (s.rows.at + b) * 4 * H + j;
  T* dz_tan = dz + s.rows.total * 4 * H;
  for (int q = 0; q < 4; ++q) {
    store(dz + q * H, r.dz[q].value);
    store(dz_tan + q * H, r.dz[q].tangent);
  }
  dc[k] = r.dc.value;
  dc[tangent + k] = r.dc.tangent;
}

template <typename T, typename A>
FUSEDRNN_HD void element(const GRUTangentStep& s, int64_t b, int64_t j) {
  const int64_t H = s.hidden, row = s.rows.at + b, at = row * H + j;
  const int64_t g3 = row * 3 * H + j, g2 = row * 2 * H + j;
  auto u = second_order::gru_unit<T, A>(s.saved, s.h_prev, row, j, H);
  u.h_prev_dot = s.h_prev_dot ? load<A>(static_cast<const T*>(s.h_prev_dot) + b * H + j) : A(0);
  const T* x_dot = static_cast<const T*>(s.x_gates_dot) + g3;
  const T* h_dot = static_cast<const T*>(s.h_gates_dot) + g3;
  const A x_dots[3] = {load<A>(x_dot), load<A>(x_dot + H), load<A>(x_dot + 2 * H)};
  const A h_dots[3] = {load<A>(h_dot), load<A>(h_dot + H), load<A>(h_dot + 2 * H)};
  const auto r = second_order::gru_tangent(u, x_dots, h_dots);
  store(static_cast<T*>(s.rz_dot) + g2, r.r_dot);
  store(static_cast<T*>(s.rz_dot) + g2 + H, r.z_dot);
  store(static_cast<T*>(s.n_dot) + at, r.n_dot);
  store(static_cast<T*>(s.h_dot) + at, r.h_dot);
}

template <typename T, typename A>
FUSEDRNN_HD void element(const GRUBackwardTangentStep& s, int64_t b, int64_t j) {
  const int64_t H = s.hidden, row = s.rows.at + b, k = b * H + j, at = row * H + j;
  const int64_t tangent = s.width * H;
  const T* rz_dot = static_cast<const T*>(s.rz_dot);
  A* dh_data = static_cast<A*>(s.dh);
  const A u_k = load<A>(static_cast<const T*>(s.u_y) + at);
  const A u_dot_k = s.u_y_dot ? load<A>(static_cast<const T*>(s.u_y_dot) + at) : A(0);
  second_order::Pair<A> dh;
  if (b >= s.rows.after_batch) {  // the sequence ends here
    dh = {s.u_hn ? u_k + load<A>(static_cast<const T*>(s.u_hn) + k) : u_k,
          s.u_hn_dot ? u_dot_k + load<A>(static_cast<const T*>(s.u_hn_dot) + k) : u_dot_k};
  } else {
    const T* product = static_cast<const T*>(s.through_w_hh);
    const int64_t next = s.rows.after + b;
    dh = second_order::gru_into_previous<A>(
        {load<A>(product + k), load<A>(product + tangent + k)},
        {dh_data[k], dh_data[tangent + k]},
        second_order::gru_unit<T, A>(s.saved, s.h_prev, next, j, H).z,
        load<A>(rz_dot + next * 2 * H + H + j));
    dh.value += u_k;
    dh.tangent += u_dot_k;
  }
  auto u = second_order::gru_unit<T, A>(s.saved, s.h_prev, row, j, H);
  u.r_dot = load<A>(rz_dot + row * 2 * H + j);
  u.z_dot = load<A>(rz_dot + row * 2 * H + H + j);
  u.n_dot = load<A>(static_cast<const T*>(s.n_dot) + at);
  u.hn_dot = load<A>(static_cast<const T*>(s.h_gates_dot) + row * 3 * H + 2 * H + j);
  u.h_prev_dot = load<A>(static_cast<const T*>(s.h_prev_dot) + at);
  second_order::Pair<A> out[4];
  second_order::gru_backward_tangent(u, dh, out);
  T* step = static_cast<T*>(s.grads) + row * 4 * H + j;
  T* step_tan = step + s.rows.total * 4 * H;
  for (int q = 0; q < 4; ++q) {
    store(step + q * H, out[q].value);
    store(step_tan + q * H, out[q].tangent);
  }
  dh_data[k] = dh.value;
  dh_data[tangent + k] = dh.tangent;
}

template <typename T, typename A>
FUSEDRNN_HD void element(const RNNBackwardTangentStep& s, int64_t b, int64_t j) {
  const int64_t k = b * s.hidden + j, at = (s.rows.at + b) * s.hidden + j;
  const T* dh = static_cast<const T*>(s.dh);
  const auto r = second_order::product(
      load<A>(static_cast<const T*>(s.d_act) + at),
      s.d_act_dot ? load<A>(static_cast<const T*>(s.d_act_dot) + at) : A(0), load<A>(dh + k),
      load<A>(dh + s.width * s.hidden + k));
  store(static_cast<T*>(s.grads) + at, r.value);
  store(static_cast<T*>(s.grads) + s.rows.total * s.hidden + at, r.tangent);
}

}  // namespace FUSEDRNN_ISA
}  // namespace fusedrnn
