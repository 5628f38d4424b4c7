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

// Every tensor read or written through a pointer here: contiguous, on the CPU, of like's dtype
// (an undefined one passes).
void check(std::initializer_list<const Tensor*> tensors, const Tensor& like) {
  for (const Tensor* t : tensors) {
    if (!t->defined()) continue;
    TORCH_CHECK(t->is_contiguous() && t->is_cpu() && t->scalar_type() == like.scalar_type(),
                "fusedrnn: the double backward's loops take contiguous CPU tensors of one dtype");
  }
}

// An optional argument read through a pointer (an incoming gradient may be strided).
Tensor contiguous_or_undefined(const OptionalTensor& t) { return t ? t->contiguous() : Tensor(); }

template <typename T> T* data(const Tensor& t) { return t.data_ptr<T>(); }

// [d, d'] [2, B, K] -> out [2, B, N] = [d w, d' w + d w_dot]: a backward step's product
// through w [K, N] and its tangent.
void backward_product(const Tensor& d, const Tensor& w, const OptionalTensor& w_dot,
                      const Tensor& out) {
  Tensor value = out.select(0, 0), tangent = out.select(0, 1);
  at::mm_out(value, d.select(0, 0), w);
  at::mm_out(tangent, d.select(0, 1), w);
  if (w_dot) tangent.addmm_(d.select(0, 0), *w_dot);
}

#define FUSEDRNN_DISPATCH(tensor, name, ...)                                                 \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, (tensor).scalar_type(), name, \
                                  __VA_ARGS__)

}  // namespace

void lstm_tangent_steps(const Tensor& pre_dot, const Tensor& e, const Tensor& k1,
                        const Tensor& f, const Tensor& w_hh, const OptionalTensor& h0_dot,
                        const OptionalTensor& c0_dot, const OptionalTensor& w_hr,
                        const OptionalTensor& m_w_hr_dot, const Tensor& c_dot,
                        const Tensor& m_dot, const Tensor& h_dot) {
  check({&pre_dot, &e, &k1, &f, &c_dot, &m_dot, &h_dot}, pre_dot);
  const Tensor c0_dot_ = contiguous_or_undefined(c0_dot);
  check({&c0_dot_}, pre_dot);
  const int64_t T = pre_dot.size(0), B = pre_dot.size(1), H = k1.size(2);
  FUSEDRNN_DISPATCH(pre_dot, "lstm_tangent_steps", [&] {
    using A = typename AccumulateType<scalar_t>::type;
    const scalar_t* const e_data = data<scalar_t>(e);
    scalar_t* const c_dot_data = data<scalar_t>(c_dot);
    const scalar_t* const k1_data = data<scalar_t>(k1);
    const scalar_t* const f_data = data<scalar_t>(f);
    scalar_t* const m_dot_data = data<scalar_t>(m_dot);
    Tensor h_last = h0_dot ? *h0_dot : Tensor();
    const scalar_t* c_last = c0_dot_.defined() ? data<scalar_t>(c0_dot_) : nullptr;
    for (int64_t t = 0; t < T; ++t) {
      Tensor pre_t = pre_dot.select(0, t);
      if (h_last.defined()) pre_t.addmm_(h_last, w_hh.t());
      const scalar_t* pd = data<scalar_t>(pre_t);
      const scalar_t* et = e_data + t * B * 4 * H;
      const int64_t at = t * B * H;
      scalar_t* cd = c_dot_data + at;
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t j = 0; j < H; ++j) {
          const int64_t k = b * H + j, g = b * 4 * H + j;
          const A pre[4] = {load<A>(pd + g), load<A>(pd + g + H), load<A>(pd + g + 2 * H),
                            load<A>(pd + g + 3 * H)};
          const A factors[4] = {load<A>(et + g), load<A>(et + g + H), load<A>(et + g + 2 * H),
                                load<A>(et + g + 3 * H)};
          const auto r = second_order::lstm_tangent<A>(
              pre, factors, load<A>(k1_data + at + k),
              load<A>(f_data + at + k), c_last ? load<A>(c_last + k) : A(0));
          store(cd + k, r.c_dot);
          store(m_dot_data + at + k, r.m_dot);
        }
      }
      if (w_hr) {
        Tensor h_t = h_dot.select(0, t);
        at::mm_out(h_t, m_dot.select(0, t), w_hr->t());
        if (m_w_hr_dot) h_t.add_(m_w_hr_dot->select(0, t));
      }
      h_last = h_dot.select(0, t);
      c_last = cd;
    }
  });
}

void lstm_backward_tangent_steps(const Tensor& u_y, const OptionalTensor& u_hn,
                                 const OptionalTensor& u_cn, const Tensor& e, const Tensor& e_dot,
                                 const Tensor& k1, const Tensor& k1_dot, const Tensor& f,
                                 const Tensor& f_dot, const Tensor& w_hh,
                                 const OptionalTensor& w_hh_dot, const OptionalTensor& w_hr,
                                 const OptionalTensor& w_hr_dot, const Tensor& grads,
                                 const OptionalTensor& dh_all, const Tensor& dc_first) {
  check({&u_y, &e, &e_dot, &k1, &k1_dot, &f, &f_dot, &grads, &dc_first}, u_y);
  const Tensor u_cn_ = contiguous_or_undefined(u_cn);
  check({&u_cn_}, u_y);
  const int64_t T = u_y.size(0), B = u_y.size(1), P = u_y.size(2), H = k1.size(2);
  // dh, dh' of the step, and with a projection dm, dm' (the cell output's).
  const Tensor dh_both = at::empty({2, B, P}, u_y.options());
  const Tensor dm_both = w_hr ? at::empty({2, B, H}, u_y.options()) : dh_both;
  FUSEDRNN_DISPATCH(u_y, "lstm_backward_tangent_steps", [&] {
    using A = typename AccumulateType<scalar_t>::type;
    const scalar_t* const f_data = data<scalar_t>(f);
    const scalar_t* const f_dot_data = data<scalar_t>(f_dot);
    const scalar_t* const e_data = data<scalar_t>(e);
    const scalar_t* const e_dot_data = data<scalar_t>(e_dot);
    const scalar_t* const k1_data = data<scalar_t>(k1);
    const scalar_t* const k1_dot_data = data<scalar_t>(k1_dot);
    std::vector<WithTangent<A>> dc(B * H);  // dc, dc' of step t+1
    const scalar_t* u_cn_data = u_cn_.defined() ? data<scalar_t>(u_cn_) : nullptr;
    for (int64_t t = T - 1; t >= 0; --t) {
      const bool last = t == T - 1;
      if (last) {
        dh_both[0].copy_(u_y[t]);
        if (u_hn) dh_both[0].add_(*u_hn);
        dh_both[1].zero_();
      } else {
        backward_product(grads.select(1, t + 1), w_hh, w_hh_dot, dh_both);
        dh_both[0].add_(u_y[t]);
      }
      if (w_hr) {
        dh_all->select(1, t).copy_(dh_both);
        backward_product(dh_both, *w_hr, w_hr_dot, dm_both);
      }
      const scalar_t* dm = data<scalar_t>(dm_both);
      const int64_t at = t * B * H, next = (t + 1) * B * H, gates = t * B * 4 * H;
      scalar_t* dz = data<scalar_t>(grads) + gates;
      scalar_t* dz_tan = dz + T * B * 4 * H;
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t j = 0; j < H; ++j) {
          const int64_t k = b * H + j, g = b * 4 * H + j;
          WithTangent<A> dc_in{u_cn_data && last ? load<A>(u_cn_data + k) : A(0), A(0)};
          if (!last) {
            const A f_next = load<A>(f_data + next + k);
            dc_in = second_order::product(f_next, load<A>(f_dot_data + next + k),
                                          dc[k].value, dc[k].tangent);
          }
          A factors[4], factors_dot[4];
          for (int q = 0; q < 4; ++q) {
            factors[q] = load<A>(e_data + gates + g + q * H);
            factors_dot[q] = load<A>(e_dot_data + gates + g + q * H);
          }
          const auto r = second_order::lstm_backward_tangent<A>(
              {load<A>(dm + k), load<A>(dm + B * H + k)}, load<A>(k1_data + at + k),
              load<A>(k1_dot_data + at + k), dc_in, factors, factors_dot);
          for (int q = 0; q < 4; ++q) {
            store(dz + g + q * H, r.dz[q].value);
            store(dz_tan + g + q * H, r.dz[q].tangent);
          }
          dc[k] = r.dc;
        }
      }
    }
    scalar_t* out = data<scalar_t>(dc_first);
    for (int64_t k = 0; k < B * H; ++k) {
      store(out + k, dc[k].value);
      store(out + B * H + k, dc[k].tangent);
    }
  });
}

void gru_tangent_steps(const Tensor& x_gates_dot, const Tensor& h_gates_dot, const Tensor& rz,
                       const Tensor& d_rz, const Tensor& h_gates, const Tensor& d_n,
                       const Tensor& h_prev_minus_n, const Tensor& w_hh,
                       const OptionalTensor& h0_dot, const Tensor& rz_dot, const Tensor& n_dot,
                       const Tensor& h_dot) {
  check({&x_gates_dot, &h_gates_dot, &rz, &d_rz, &h_gates, &d_n, &h_prev_minus_n, &rz_dot,
         &n_dot, &h_dot}, x_gates_dot);
  const int64_t T = h_dot.size(0), B = h_dot.size(1), H = h_dot.size(2);
  FUSEDRNN_DISPATCH(h_dot, "gru_tangent_steps", [&] {
    using A = typename AccumulateType<scalar_t>::type;
    const scalar_t* const x_gates_dot_data = data<scalar_t>(x_gates_dot);
    const scalar_t* const h_gates_dot_data = data<scalar_t>(h_gates_dot);
    const scalar_t* const d_rz_data = data<scalar_t>(d_rz);
    const scalar_t* const d_n_data = data<scalar_t>(d_n);
    const scalar_t* const rz_data = data<scalar_t>(rz);
    const scalar_t* const h_gates_data = data<scalar_t>(h_gates);
    const scalar_t* const h_prev_minus_n_data = data<scalar_t>(h_prev_minus_n);
    scalar_t* const rz_dot_data = data<scalar_t>(rz_dot);
    scalar_t* const n_dot_data = data<scalar_t>(n_dot);
    scalar_t* const h_dot_data = data<scalar_t>(h_dot);
    Tensor h_last = contiguous_or_undefined(h0_dot);
    check({&h_last}, h_dot);
    for (int64_t t = 0; t < T; ++t) {
      Tensor h_gates_t = h_gates_dot.select(0, t);
      if (h_last.defined()) h_gates_t.addmm_(h_last, w_hh.t());
      const scalar_t* h_prev_dot = h_last.defined() ? data<scalar_t>(h_last) : nullptr;
      const int64_t at = t * B * H;
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t j = 0; j < H; ++j) {
          const int64_t k = b * H + j, g3 = (t * B + b) * 3 * H + j, g2 = (t * B + b) * 2 * H + j;
          const A x_dot[3] = {load<A>(x_gates_dot_data + g3),
                              load<A>(x_gates_dot_data + g3 + H),
                              load<A>(x_gates_dot_data + g3 + 2 * H)};
          const A h_dot_gates[3] = {load<A>(h_gates_dot_data + g3),
                                    load<A>(h_gates_dot_data + g3 + H),
                                    load<A>(h_gates_dot_data + g3 + 2 * H)};
          const auto r = second_order::gru_tangent<A>(
              x_dot, h_dot_gates, load<A>(d_rz_data + g2),
              load<A>(d_rz_data + g2 + H), load<A>(d_n_data + at + k),
              load<A>(rz_data + g2), load<A>(rz_data + g2 + H),
              load<A>(h_gates_data + g3 + 2 * H),
              load<A>(h_prev_minus_n_data + at + k),
              h_prev_dot ? load<A>(h_prev_dot + k) : A(0));
          store(rz_dot_data + g2, r.r_dot);
          store(rz_dot_data + g2 + H, r.z_dot);
          store(n_dot_data + at + k, r.n_dot);
          store(h_dot_data + at + k, r.h_dot);
        }
      }
      h_last = h_dot.select(0, t);
    }
  });
}

void gru_backward_tangent_steps(const Tensor& u_y, const OptionalTensor& u_hn, const Tensor& e,
                                const Tensor& e_dot, const Tensor& rz, const Tensor& rz_dot,
                                const Tensor& w_hh, const OptionalTensor& w_hh_dot,
                                const Tensor& grads, const Tensor& dh_first) {
  check({&u_y, &e, &e_dot, &rz, &rz_dot, &grads, &dh_first}, u_y);
  const Tensor u_hn_ = contiguous_or_undefined(u_hn);
  check({&u_hn_}, u_y);
  const int64_t T = u_y.size(0), B = u_y.size(1), H = u_y.size(2);
  const Tensor through_w_hh = at::empty({2, B, H}, u_y.options());
  FUSEDRNN_DISPATCH(u_y, "gru_backward_tangent_steps", [&] {
    using A = typename AccumulateType<scalar_t>::type;
    const scalar_t* const u_y_data = data<scalar_t>(u_y);
    const scalar_t* const rz_data = data<scalar_t>(rz);
    const scalar_t* const rz_dot_data = data<scalar_t>(rz_dot);
    const scalar_t* const e_data = data<scalar_t>(e);
    const scalar_t* const e_dot_data = data<scalar_t>(e_dot);
    std::vector<WithTangent<A>> dh(B * H);  // dh, dh' of step t+1, then of step t
    const scalar_t* u_hn_data = u_hn_.defined() ? data<scalar_t>(u_hn_) : nullptr;
    for (int64_t t = T - 1; t >= 0; --t) {
      const bool last = t == T - 1;
      // The gradients of the h gates are the first 3H of each row of step t+1's.
      if (!last) backward_product(grads.select(1, t + 1).narrow(2, 0, 3 * H), w_hh, w_hh_dot,
                                  through_w_hh);
      const scalar_t* product = data<scalar_t>(through_w_hh);
      scalar_t* step = data<scalar_t>(grads) + t * B * 4 * H;
      scalar_t* step_tan = step + T * B * 4 * H;
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t j = 0; j < H; ++j) {
          const int64_t k = b * H + j, g = b * 4 * H + j, z = ((t + 1) * B + b) * 2 * H + H + j;
          const A u = load<A>(u_y_data + t * B * H + k);
          if (last) {
            dh[k] = {u_hn_data ? u + load<A>(u_hn_data + k) : u, A(0)};
          } else {
            dh[k] = second_order::gru_into_previous<A>(
                {load<A>(product + k), load<A>(product + B * H + k)}, dh[k],
                load<A>(rz_data + z), load<A>(rz_dot_data + z));
            dh[k].value += u;
          }
          for (int q = 0; q < 4; ++q) {
            const int64_t at = t * B * 4 * H + g + q * H;
            const auto r = second_order::product(load<A>(e_data + at),
                                                 load<A>(e_dot_data + at),
                                                 dh[k].value, dh[k].tangent);
            store(step + g + q * H, r.value);
            store(step_tan + g + q * H, r.tangent);
          }
        }
      }
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
  check({&pre_dot, &d_act, &h_dot}, pre_dot);
  Tensor h_last = h0_dot ? *h0_dot : Tensor();
  for (int64_t t = 0; t < pre_dot.size(0); ++t) {
    Tensor pre_t = pre_dot.select(0, t), h_t = h_dot.select(0, t);
    if (h_last.defined()) pre_t.addmm_(h_last, w_hh.t());
    at::mul_out(h_t, pre_t, d_act.select(0, t));
    h_last = h_t;
  }
}

void rnn_backward_tangent_steps(const Tensor& u_y, const OptionalTensor& u_hn,
                                const Tensor& d_act, const OptionalTensor& d_act_dot,
                                const Tensor& w_hh, const OptionalTensor& w_hh_dot,
                                const Tensor& grads) {
  check({&u_y, &d_act, &grads}, u_y);
  const Tensor d_act_dot_ = contiguous_or_undefined(d_act_dot);
  check({&d_act_dot_}, u_y);
  const int64_t T = u_y.size(0), B = u_y.size(1), H = u_y.size(2);
  const Tensor dh_both = at::empty({2, B, H}, u_y.options());
  FUSEDRNN_DISPATCH(u_y, "rnn_backward_tangent_steps", [&] {
    using A = typename AccumulateType<scalar_t>::type;
    const scalar_t* const d_act_data = data<scalar_t>(d_act);
    const scalar_t* d_act_dot_data = d_act_dot_.defined() ? data<scalar_t>(d_act_dot_) : nullptr;
    for (int64_t t = T - 1; t >= 0; --t) {
      if (t == T - 1) {
        dh_both[0].copy_(u_y[t]);
        if (u_hn) dh_both[0].add_(*u_hn);
        dh_both[1].zero_();
      } else {
        backward_product(grads.select(1, t + 1), w_hh, w_hh_dot, dh_both);
        dh_both[0].add_(u_y[t]);
      }
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
