// The double backward's loops over time (second_order.h); the math of one unit is
// core/second_order.h.
#include "second_order.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <initializer_list>
#include <vector>

#include "../core/elements.h"
#include "../core/second_order.h"

namespace fusedrnn {
namespace {

using second_order::WithTangent;

// A tensor read or written through a pointer here, and the sizes it must have.
struct Expected {
  const Tensor& tensor;
  std::vector<int64_t> sizes;
};

// Each: contiguous, on the CPU, of like's dtype, of its sizes (an undefined one passes).
void check(std::initializer_list<Expected> tensors, const Tensor& like) {
  for (const auto& [t, sizes] : tensors) {
    if (!t.defined()) continue;
    TORCH_CHECK(t.is_contiguous() && t.is_cpu() && t.scalar_type() == like.scalar_type(),
                "fusedrnn: the double backward's loops take contiguous CPU tensors of one dtype");
    TORCH_CHECK(t.sizes() == at::IntArrayRef(sizes), "fusedrnn: the double backward's loops: ",
                "a tensor of sizes ", t.sizes(), " where ", at::IntArrayRef(sizes), " belongs");
  }
}

// An optional argument read by tensor operations, which may be strided: as check(), but for
// the layout.
void check_sizes(const OptionalTensor& t, const std::vector<int64_t>& sizes, const Tensor& like) {
  if (!t) return;
  TORCH_CHECK(t->is_cpu() && t->scalar_type() == like.scalar_type(),
              "fusedrnn: the double backward's loops take CPU tensors of one dtype");
  TORCH_CHECK(t->sizes() == at::IntArrayRef(sizes), "fusedrnn: the double backward's loops: ",
              "a tensor of sizes ", t->sizes(), " where ", at::IntArrayRef(sizes), " belongs");
}

// An optional argument read through a pointer (an incoming gradient may be strided).
Tensor contiguous_or_undefined(const OptionalTensor& t) { return t ? t->contiguous() : Tensor(); }

template <typename T> T* data(const Tensor& t) { return t.data_ptr<T>(); }
template <typename T> T* data_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// [d, d'] [2, B, K] -> out [2, B, N] = [d w, d' w + d w_dot]: a backward step's product
// through w [K, N] and its tangent.
void backward_product(const Tensor& d, const Tensor& w, const OptionalTensor& w_dot,
                      const Tensor& out) {
  Tensor value = out.select(0, 0), tangent = out.select(0, 1);
  at::mm_out(value, d.select(0, 0), w);
  at::mm_out(tangent, d.select(0, 1), w);
  if (w_dot) tangent.addmm_(d.select(0, 0), *w_dot);
}

// [dh, dh'] of step t into dh_both [2, B, P], for a cell whose h_{t-1} reaches step t through
// W_hh alone: the output's gradient (and h_n's at the last step) and their tangents, plus the
// path from step t+1's pre-activation gradients grads[:, t+1] through W_hh, with its tangent.
void gradient_reaching_h(int64_t t, const Tensor& u_y, const OptionalTensor& u_hn,
                         const OptionalTensor& u_y_dot, const OptionalTensor& u_hn_dot,
                         const Tensor& grads, const Tensor& w_hh, const OptionalTensor& w_hh_dot,
                         const Tensor& dh_both) {
  if (t == u_y.size(0) - 1) {
    dh_both[0].copy_(u_y[t]);
    if (u_hn) dh_both[0].add_(*u_hn);
    dh_both[1].zero_();
    if (u_hn_dot) dh_both[1].add_(*u_hn_dot);
  } else {
    backward_product(grads.select(1, t + 1), w_hh, w_hh_dot, dh_both);
    dh_both[0].add_(u_y[t]);
  }
  if (u_y_dot) dh_both[1].add_((*u_y_dot)[t]);
}

// One LSTM layer's saved activations and tangents, read unit by unit (batch row b, unit j).
template <typename T> struct LSTMSteps {
  const T* activations;  // [T, B, 4H] the gates i, f, g, o
  const T* pre_dot;      // [T, B, 4H] the pre-activations' tangents
  const T* cells;        // [T, B, H]
  const T* tanh_cells;   // [T, B, H]
  const T* c0;           // [B, H]
  const T* c_dot;        // [T, B, H]
  const T* c0_dot;       // [B, H] or null (zeros)
  int64_t B, H;

  static LSTMSteps of(const Tensor& gates, const Tensor& pre_dot, const Tensor& cells,
                      const Tensor& tanh_cells, const Tensor& c0, const Tensor& c_dot,
                      const Tensor& c0_dot) {
    return {data<T>(gates), data<T>(pre_dot), data<T>(cells), data<T>(tanh_cells),
            data<T>(c0), data<T>(c_dot), data_or_null<T>(c0_dot), cells.size(1), cells.size(2)};
  }

  // f and its tangent at step t.
  template <typename A> WithTangent<A> forget_gate(int64_t t, int64_t b, int64_t j) const {
    const int64_t g = (t * B + b) * 4 * H + H + j;
    const A f = load<A>(activations + g);
    return {f, gates::d_sigmoid(f) * load<A>(pre_dot + g)};
  }

  // The unit at step t; c_dot only where with_c_dot (the forward loop is computing it).
  template <typename A>
  second_order::LSTMUnit<A> unit(int64_t t, int64_t b, int64_t j, bool with_c_dot) const {
    second_order::LSTMUnit<A> u;
    const int64_t g = (t * B + b) * 4 * H + j, k = b * H + j, at = t * B * H + k;
    for (int q = 0; q < 4; ++q) {
      u.a[q] = load<A>(activations + g + q * H);
      u.a_dot[q] = second_order::lstm_gate_derivative(q, u.a[q]) * load<A>(pre_dot + g + q * H);
    }
    u.c = load<A>(cells + at);
    u.tanh_c = load<A>(tanh_cells + at);
    u.c_dot = with_c_dot ? load<A>(c_dot + at) : A(0);
    u.c_prev = t ? load<A>(cells + at - B * H) : load<A>(c0 + k);
    u.c_prev_dot = t ? load<A>(c_dot + at - B * H) : c0_dot ? load<A>(c0_dot + k) : A(0);
    return u;
  }
};

// One GRU layer's saved activations, read unit by unit (batch row b, unit j). The tangents
// are the caller's to fill.
template <typename T> struct GRUSteps {
  const T* saved;   // [T, B, 4H] r, z, n, hn
  const T* h_prev;  // [T, B, H]
  int64_t B, H;

  template <typename A> second_order::GRUUnit<A> unit(int64_t t, int64_t b, int64_t j) const {
    second_order::GRUUnit<A> u{};
    const T* s = saved + (t * B + b) * 4 * H + j;
    u.r = load<A>(s);
    u.z = load<A>(s + H);
    u.n = load<A>(s + 2 * H);
    u.hn = load<A>(s + 3 * H);
    u.h_prev = load<A>(h_prev + (t * B + b) * H + j);
    return u;
  }
};

// body(b, j) for every unit of a step, on one thread: the step's matrix products take most of
// a step (at T=100 B=64 H=256 the GRU's units 15 of its 32 ms forward loop, and splitting them
// between the two threads measured no faster).
template <typename F> void for_units(int64_t B, int64_t H, const F& body) {
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < H; ++j) body(b, j);
  }
}

#define FUSEDRNN_DISPATCH(tensor, name, ...)                                                 \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, (tensor).scalar_type(), name, \
                                  __VA_ARGS__)

}  // namespace

void lstm_tangent_steps(const Tensor& pre_dot, const Tensor& gates, const Tensor& cells,
                        const Tensor& tanh_cells, const Tensor& c0, const Tensor& w_hh,
                        const OptionalTensor& h0_dot, const OptionalTensor& c0_dot,
                        const OptionalTensor& w_hr, const OptionalTensor& m_w_hr_dot,
                        const Tensor& c_dot, const Tensor& m_dot, const Tensor& h_dot) {
  const Tensor c0_ = c0.contiguous(), c0_dot_ = contiguous_or_undefined(c0_dot);
  const int64_t T = cells.size(0), B = cells.size(1), H = cells.size(2), P = w_hh.size(1);
  check({{pre_dot, {T, B, 4 * H}}, {gates, {T, B, 4 * H}}, {cells, {T, B, H}},
         {tanh_cells, {T, B, H}}, {c0_, {B, H}}, {c0_dot_, {B, H}}, {c_dot, {T, B, H}},
         {m_dot, {T, B, H}}, {h_dot, {T, B, P}}}, pre_dot);
  FUSEDRNN_DISPATCH(pre_dot, "lstm_tangent_steps", [&] {
    using A = typename AccumulateType<scalar_t>::type;
    const auto steps = LSTMSteps<scalar_t>::of(gates, pre_dot, cells, tanh_cells, c0_, c_dot,
                                               c0_dot_);
    scalar_t* const c_dot_data = data<scalar_t>(c_dot);
    scalar_t* const m_dot_data = data<scalar_t>(m_dot);
    Tensor h_last = h0_dot ? *h0_dot : Tensor();
    for (int64_t t = 0; t < T; ++t) {
      if (h_last.defined()) pre_dot.select(0, t).addmm_(h_last, w_hh.t());
      for_units(B, H, [&](int64_t b, int64_t j) {
        const int64_t k = b * H + j;
        const auto r =
            second_order::lstm_tangent(steps.unit<A>(t, b, j, /*with_c_dot=*/false));
        store(c_dot_data + t * B * H + k, r.c_dot);
        store(m_dot_data + t * B * H + k, r.m_dot);
      });
      if (w_hr) {
        Tensor h_t = h_dot.select(0, t);
        at::mm_out(h_t, m_dot.select(0, t), w_hr->t());
        if (m_w_hr_dot) h_t.add_(m_w_hr_dot->select(0, t));
      }
      h_last = h_dot.select(0, t);
    }
  });
}

void lstm_backward_tangent_steps(const Tensor& u_y, const OptionalTensor& u_hn,
                                 const OptionalTensor& u_cn, const OptionalTensor& u_y_dot,
                                 const OptionalTensor& u_hn_dot,
                                 const OptionalTensor& u_cn_dot, const Tensor& gates,
                                 const Tensor& pre_dot, const Tensor& cells,
                                 const Tensor& tanh_cells, const Tensor& c0, const Tensor& c_dot,
                                 const OptionalTensor& c0_dot, const Tensor& w_hh,
                                 const OptionalTensor& w_hh_dot, const OptionalTensor& w_hr,
                                 const OptionalTensor& w_hr_dot, const Tensor& grads,
                                 const OptionalTensor& dh_all, const Tensor& dc_first) {
  const Tensor c0_ = c0.contiguous(), c0_dot_ = contiguous_or_undefined(c0_dot);
  const Tensor u_cn_ = contiguous_or_undefined(u_cn);
  const Tensor u_cn_dot_ = contiguous_or_undefined(u_cn_dot);
  const int64_t T = cells.size(0), B = cells.size(1), H = cells.size(2), P = w_hh.size(1);
  check({{u_y, {T, B, P}}, {gates, {T, B, 4 * H}}, {pre_dot, {T, B, 4 * H}}, {cells, {T, B, H}},
         {tanh_cells, {T, B, H}}, {c0_, {B, H}}, {c_dot, {T, B, H}}, {c0_dot_, {B, H}},
         {u_cn_, {B, H}}, {u_cn_dot_, {B, H}}, {grads, {2, T, B, 4 * H}},
         {dc_first, {2, B, H}}}, u_y);
  check_sizes(u_y_dot, {T, B, P}, u_y);
  check_sizes(u_hn_dot, {B, P}, u_y);
  // dh, dh' of the step, and with a projection dm, dm' (the cell output's).
  const Tensor dh_both = at::empty({2, B, P}, u_y.options());
  const Tensor dm_both = w_hr ? at::empty({2, B, H}, u_y.options()) : dh_both;
  FUSEDRNN_DISPATCH(u_y, "lstm_backward_tangent_steps", [&] {
    using A = typename AccumulateType<scalar_t>::type;
    const auto steps = LSTMSteps<scalar_t>::of(gates, pre_dot, cells, tanh_cells, c0_, c_dot,
                                               c0_dot_);
    const scalar_t* const u_cn_data = data_or_null<scalar_t>(u_cn_);
    const scalar_t* const u_cn_dot_data = data_or_null<scalar_t>(u_cn_dot_);
    std::vector<WithTangent<A>> dc(B * H);  // dc, dc' of step t+1, then of step t
    for (int64_t t = T - 1; t >= 0; --t) {
      const bool last = t == T - 1;
      gradient_reaching_h(t, u_y, u_hn, u_y_dot, u_hn_dot, grads, w_hh, w_hh_dot, dh_both);
      if (w_hr) {
        dh_all->select(1, t).copy_(dh_both);
        backward_product(dh_both, *w_hr, w_hr_dot, dm_both);
      }
      const scalar_t* dm = data<scalar_t>(dm_both);
      scalar_t* dz = data<scalar_t>(grads) + t * B * 4 * H;
      scalar_t* dz_tan = dz + T * B * 4 * H;
      for_units(B, H, [&](int64_t b, int64_t j) {
        const int64_t k = b * H + j, g = b * 4 * H + j;
        WithTangent<A> dc_in{u_cn_data && last ? load<A>(u_cn_data + k) : A(0),
                             u_cn_dot_data && last ? load<A>(u_cn_dot_data + k) : A(0)};
        if (!last) {
          const WithTangent<A> f_next = steps.forget_gate<A>(t + 1, b, j);
          dc_in = second_order::product(f_next.value, f_next.tangent, dc[k].value,
                                        dc[k].tangent);
        }
        const auto r = second_order::lstm_backward_tangent(
            steps.unit<A>(t, b, j, /*with_c_dot=*/true),
            {load<A>(dm + k), load<A>(dm + B * H + k)}, dc_in);
        for (int q = 0; q < 4; ++q) {
          store(dz + g + q * H, r.dz[q].value);
          store(dz_tan + g + q * H, r.dz[q].tangent);
        }
        dc[k] = r.dc;
      });
    }
    scalar_t* out = data<scalar_t>(dc_first);
    for (int64_t k = 0; k < B * H; ++k) {
      store(out + k, dc[k].value);
      store(out + B * H + k, dc[k].tangent);
    }
  });
}

void gru_tangent_steps(const Tensor& x_gates_dot, const Tensor& h_gates_dot, const Tensor& saved,
                       const Tensor& h_prev, const Tensor& w_hh, const OptionalTensor& h0_dot,
                       const Tensor& rz_dot, const Tensor& n_dot, const Tensor& h_dot) {
  const Tensor h0_dot_ = contiguous_or_undefined(h0_dot);
  const int64_t T = h_prev.size(0), B = h_prev.size(1), H = h_prev.size(2);
  check({{x_gates_dot, {T, B, 3 * H}}, {h_gates_dot, {T, B, 3 * H}}, {saved, {T, B, 4 * H}},
         {h_prev, {T, B, H}}, {h0_dot_, {B, H}}, {rz_dot, {T, B, 2 * H}}, {n_dot, {T, B, H}},
         {h_dot, {T, B, H}}}, h_dot);
  FUSEDRNN_DISPATCH(h_dot, "gru_tangent_steps", [&] {
    using A = typename AccumulateType<scalar_t>::type;
    const GRUSteps<scalar_t> steps{data<scalar_t>(saved), data<scalar_t>(h_prev), B, H};
    const scalar_t* const x_dot_data = data<scalar_t>(x_gates_dot);
    const scalar_t* const h_gates_dot_data = data<scalar_t>(h_gates_dot);
    scalar_t* const rz_dot_data = data<scalar_t>(rz_dot);
    scalar_t* const n_dot_data = data<scalar_t>(n_dot);
    scalar_t* const h_dot_data = data<scalar_t>(h_dot);
    for (int64_t t = 0; t < T; ++t) {
      const scalar_t* h_prev_dot = t ? h_dot_data + (t - 1) * B * H
                                     : data_or_null<scalar_t>(h0_dot_);
      if (h_prev_dot) h_gates_dot.select(0, t).addmm_(t ? h_dot[t - 1] : h0_dot_, w_hh.t());
      for_units(B, H, [&](int64_t b, int64_t j) {
        const int64_t k = b * H + j, g3 = (t * B + b) * 3 * H + j, g2 = (t * B + b) * 2 * H + j;
        auto u = steps.unit<A>(t, b, j);
        u.h_prev_dot = h_prev_dot ? load<A>(h_prev_dot + k) : A(0);
        const A x_dot[3] = {load<A>(x_dot_data + g3), load<A>(x_dot_data + g3 + H),
                            load<A>(x_dot_data + g3 + 2 * H)};
        const A h_dot_gates[3] = {load<A>(h_gates_dot_data + g3),
                                  load<A>(h_gates_dot_data + g3 + H),
                                  load<A>(h_gates_dot_data + g3 + 2 * H)};
        const auto r = second_order::gru_tangent(u, x_dot, h_dot_gates);
        store(rz_dot_data + g2, r.r_dot);
        store(rz_dot_data + g2 + H, r.z_dot);
        store(n_dot_data + t * B * H + k, r.n_dot);
        store(h_dot_data + t * B * H + k, r.h_dot);
      });
    }
  });
}

void gru_backward_tangent_steps(const Tensor& u_y, const OptionalTensor& u_hn,
                                const OptionalTensor& u_y_dot, const OptionalTensor& u_hn_dot,
                                const Tensor& saved, const Tensor& h_prev, const Tensor& rz_dot,
                                const Tensor& n_dot, const Tensor& h_gates_dot,
                                const Tensor& h_prev_dot, const Tensor& w_hh,
                                const OptionalTensor& w_hh_dot, const Tensor& grads,
                                const Tensor& dh_first) {
  const Tensor u_hn_ = contiguous_or_undefined(u_hn);
  const Tensor u_y_dot_ = contiguous_or_undefined(u_y_dot);
  const Tensor u_hn_dot_ = contiguous_or_undefined(u_hn_dot);
  const int64_t T = h_prev.size(0), B = h_prev.size(1), H = h_prev.size(2);
  check({{u_y, {T, B, H}}, {u_hn_, {B, H}}, {u_y_dot_, {T, B, H}}, {u_hn_dot_, {B, H}},
         {saved, {T, B, 4 * H}}, {h_prev, {T, B, H}},
         {rz_dot, {T, B, 2 * H}}, {n_dot, {T, B, H}}, {h_gates_dot, {T, B, 3 * H}},
         {h_prev_dot, {T, B, H}}, {grads, {2, T, B, 4 * H}}, {dh_first, {2, B, H}}}, u_y);
  const Tensor through_w_hh = at::empty({2, B, H}, u_y.options());
  FUSEDRNN_DISPATCH(u_y, "gru_backward_tangent_steps", [&] {
    using A = typename AccumulateType<scalar_t>::type;
    const GRUSteps<scalar_t> steps{data<scalar_t>(saved), data<scalar_t>(h_prev), B, H};
    const scalar_t* const u_y_data = data<scalar_t>(u_y);
    const scalar_t* const u_hn_data = data_or_null<scalar_t>(u_hn_);
    const scalar_t* const u_y_dot_data = data_or_null<scalar_t>(u_y_dot_);
    const scalar_t* const u_hn_dot_data = data_or_null<scalar_t>(u_hn_dot_);
    const scalar_t* const rz_dot_data = data<scalar_t>(rz_dot);
    const scalar_t* const n_dot_data = data<scalar_t>(n_dot);
    const scalar_t* const h_gates_dot_data = data<scalar_t>(h_gates_dot);
    const scalar_t* const h_prev_dot_data = data<scalar_t>(h_prev_dot);
    std::vector<WithTangent<A>> dh(B * H);  // dh, dh' of step t+1, then of step t
    for (int64_t t = T - 1; t >= 0; --t) {
      const bool last = t == T - 1;
      // The gradients of the h gates are the first 3H of each row of step t+1's.
      if (!last) backward_product(grads.select(1, t + 1).narrow(2, 0, 3 * H), w_hh, w_hh_dot,
                                  through_w_hh);
      const scalar_t* product = data<scalar_t>(through_w_hh);
      scalar_t* step = data<scalar_t>(grads) + t * B * 4 * H;
      scalar_t* step_tan = step + T * B * 4 * H;
      for_units(B, H, [&](int64_t b, int64_t j) {
        const int64_t k = b * H + j, at = t * B * H + k, g2 = (t * B + b) * 2 * H + j;
        const A u_k = load<A>(u_y_data + at);
        const A u_dot_k = u_y_dot_data ? load<A>(u_y_dot_data + at) : A(0);
        if (last) {
          dh[k] = {u_hn_data ? u_k + load<A>(u_hn_data + k) : u_k,
                   u_hn_dot_data ? u_dot_k + load<A>(u_hn_dot_data + k) : u_dot_k};
        } else {
          const int64_t z_next = g2 + B * 2 * H + H;  // z of step t+1
          dh[k] = second_order::gru_into_previous<A>(
              {load<A>(product + k), load<A>(product + B * H + k)}, dh[k],
              steps.unit<A>(t + 1, b, j).z, load<A>(rz_dot_data + z_next));
          dh[k].value += u_k;
          dh[k].tangent += u_dot_k;
        }
        auto u = steps.unit<A>(t, b, j);
        u.r_dot = load<A>(rz_dot_data + g2);
        u.z_dot = load<A>(rz_dot_data + g2 + H);
        u.n_dot = load<A>(n_dot_data + at);
        u.hn_dot = load<A>(h_gates_dot_data + (t * B + b) * 3 * H + 2 * H + j);
        u.h_prev_dot = load<A>(h_prev_dot_data + at);
        WithTangent<A> out[4];
        second_order::gru_backward_tangent(u, dh[k], out);
        for (int q = 0; q < 4; ++q) {
          store(step + b * 4 * H + q * H + j, out[q].value);
          store(step_tan + b * 4 * H + q * H + j, out[q].tangent);
        }
      });
    }
    scalar_t* out = data<scalar_t>(dh_first);
    for (int64_t k = 0; k < B * H; ++k) {
      store(out + k, dh[k].value);
      store(out + B * H + k, dh[k].tangent);
    }
  });
}

void rnn_tangent_steps(const Tensor& pre_dot, const Tensor& d_act, const Tensor& w_hh,
                       const OptionalTensor& h0_dot, const Tensor& h_dot) {
  check({{d_act, pre_dot.sizes().vec()}, {h_dot, pre_dot.sizes().vec()}}, pre_dot);
  Tensor h_last = h0_dot ? *h0_dot : Tensor();
  for (int64_t t = 0; t < pre_dot.size(0); ++t) {
    Tensor pre_t = pre_dot.select(0, t), h_t = h_dot.select(0, t);
    if (h_last.defined()) pre_t.addmm_(h_last, w_hh.t());
    at::mul_out(h_t, pre_t, d_act.select(0, t));
    h_last = h_t;
  }
}

void rnn_backward_tangent_steps(const Tensor& u_y, const OptionalTensor& u_hn,
                                const OptionalTensor& u_y_dot, const OptionalTensor& u_hn_dot,
                                const Tensor& d_act, const OptionalTensor& d_act_dot,
                                const Tensor& w_hh, const OptionalTensor& w_hh_dot,
                                const Tensor& grads) {
  const Tensor d_act_dot_ = contiguous_or_undefined(d_act_dot);
  const int64_t T = d_act.size(0), B = d_act.size(1), H = d_act.size(2);
  check({{u_y, {T, B, H}}, {d_act, {T, B, H}}, {d_act_dot_, {T, B, H}}, {grads, {2, T, B, H}}},
        u_y);
  check_sizes(u_y_dot, {T, B, H}, u_y);
  check_sizes(u_hn_dot, {B, H}, u_y);
  const Tensor dh_both = at::empty({2, B, H}, u_y.options());
  FUSEDRNN_DISPATCH(u_y, "rnn_backward_tangent_steps", [&] {
    using A = typename AccumulateType<scalar_t>::type;
    const scalar_t* const d_act_data = data<scalar_t>(d_act);
    const scalar_t* d_act_dot_data = data_or_null<scalar_t>(d_act_dot_);
    for (int64_t t = T - 1; t >= 0; --t) {
      gradient_reaching_h(t, u_y, u_hn, u_y_dot, u_hn_dot, grads, w_hh, w_hh_dot, dh_both);
      const scalar_t* dh = data<scalar_t>(dh_both);
      scalar_t* d_pre = data<scalar_t>(grads) + t * B * H;
      for (int64_t k = 0; k < B * H; ++k) {
        const int64_t at = t * B * H + k;
        const auto r = second_order::product(
            load<A>(d_act_data + at),
            d_act_dot_data ? load<A>(d_act_dot_data + at) : A(0), load<A>(dh + k),
            load<A>(dh + B * H + k));
        store(d_pre + k, r.value);
        store(d_pre + T * B * H + k, r.tangent);
      }
    }
  });
}

}  // namespace fusedrnn
