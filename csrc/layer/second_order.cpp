// The double backward's loops over time (second_order.h): each step's products here, through
// ATen on the tensors' device, and its pass over the units (core/second_order_steps.h) on the
// CPU or as a CUDA kernel (cuda/second_order.cu).
#include "second_order.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mul.h>
#include <ATen/Dispatch.h>
#ifdef FUSEDRNN_WITH_CUDA
#include <c10/core/DeviceGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <initializer_list>
#include <vector>

#include "../core/second_order_steps.h"
#include "prepare.h"
#include "sequence.h"

namespace fusedrnn {
namespace {

// A tensor the loops read or write, and the sizes it must have.
struct Expected {
  const Tensor& tensor;
  std::vector<int64_t> sizes;
};

// Each: on like's device, of like's dtype, of its sizes, and contiguous where read through a
// pointer (through_pointers; the loops' tensor operations take any strides). An undefined one
// passes.
void check(std::initializer_list<Expected> tensors, const Tensor& like,
           bool through_pointers = true) {
  for (const auto& [t, sizes] : tensors) {
    if (!t.defined()) continue;
    TORCH_CHECK((!through_pointers || t.is_contiguous()) && t.device() == like.device() &&
                    t.scalar_type() == like.scalar_type(),
                "fusedrnn: the double backward's loops take ",
                through_pointers ? "contiguous " : "", "tensors of one dtype on one device");
    TORCH_CHECK(t.sizes() == at::IntArrayRef(sizes), "fusedrnn: the double backward's loops: ",
                "a tensor of sizes ", t.sizes(), " where ", at::IntArrayRef(sizes), " belongs");
  }
}

Tensor or_undefined(const OptionalTensor& t) { return t ? *t : Tensor(); }

// An optional argument read through a pointer (an incoming gradient may be strided).
Tensor contiguous_or_undefined(const OptionalTensor& t) { return t ? t->contiguous() : Tensor(); }

const void* data_or_null(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// A [2, B, H] buffer of like's arithmetic type (float for the half types), carried from step to
// step by a backward loop's units.
Tensor carried(const Tensor& like, int64_t B, int64_t H) {
  return at::empty({2, B, H}, like.options().dtype(like.scalar_type() == at::kDouble
                                                       ? at::kDouble : at::kFloat));
}

#define FUSEDRNN_DISPATCH(tensor, name, ...)                                                 \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, (tensor).scalar_type(), name, \
                                  __VA_ARGS__)

// One step's pass over every unit: a CUDA kernel for CUDA tensors, else a loop on this thread
// (the step's products take most of a step: at T=100 B=64 H=256 the GRU's units 15 of its 32 ms
// forward loop, and splitting them between the two threads measured no faster).
template <typename Args> void units(const Tensor& like, const Args& args) {
  if (like.is_cuda()) {
#ifdef FUSEDRNN_WITH_CUDA
    const c10::DeviceGuard on_its_device(like.device());
    cuda::second_order_step(dtype_of(like), args,
                            c10::cuda::getCurrentCUDAStream(like.device().index()).stream());
    return;
#else
    TORCH_CHECK(false, "fusedrnn was built without CUDA");
#endif
  }
  TORCH_CHECK(like.is_cpu(), "fusedrnn: the double backward's loops take CPU or CUDA tensors");
  FUSEDRNN_DISPATCH(like, "fusedrnn_second_order", [&] {
    using A = typename AccumulateType<scalar_t>::type;
    for (int64_t b = 0; b < args.batch; ++b) {
      for (int64_t j = 0; j < args.hidden; ++j) element<scalar_t, A>(args, b, j);
    }
  });
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

// The steps of the loops' sequence buffers: a padded batch [T, B, W], or a PackedSequence's
// rows [rows, W] (batch_sizes), whose steps have fewer rows as sequences end.
class Steps {
 public:
  Steps(const Tensor& seq, const OptionalTensor& batch_sizes)
      : layout_(layout_of("fusedrnn: the double backward's loops", seq, batch_sizes)),
        like_(seq), padded_(!batch_sizes) {}

  int64_t count() const { return layout_.T; }
  int64_t width() const { return layout_.B; }  // the first step's rows: the batch
  int64_t batch(int64_t t) const { return layout_.batch[t]; }
  // Of step t+1, none past the last step.
  int64_t batch_after(int64_t t) const { return t + 1 < count() ? batch(t + 1) : 0; }

  StepRows rows(int64_t t) const {
    const auto& offset = layout_.offset;
    return {offset[t], t ? offset[t - 1] : 0, t + 1 < count() ? offset[t + 1] : 0,
            batch_after(t), layout_.rows, t == 0};
  }

  // The sizes of a sequence buffer `w` wide, and of a pair of them.
  std::vector<int64_t> sizes(int64_t w) const { return sequence_sizes(like_, w); }
  std::vector<int64_t> pair_sizes(int64_t w) const {
    auto s = sizes(w);
    s.insert(s.begin(), 2);
    return s;
  }

  // Step t's rows of a sequence buffer, [batch(t), W]; of a pair of them, [2, batch(t), W].
  Tensor at(const Tensor& seq, int64_t t) const {
    return padded_ ? seq.select(0, t) : seq.narrow(0, layout_.offset[t], batch(t));
  }
  Tensor pair_at(const Tensor& pair, int64_t t) const {
    return padded_ ? pair.select(1, t) : pair.narrow(1, layout_.offset[t], batch(t));
  }

 private:
  Layout layout_;
  Tensor like_;  // the sequence buffer the layout was read from
  bool padded_;
};

// [dh, dh'] of step t into dh_both [2, batch(t), P], for a cell whose h_{t-1} reaches step t
// through W_hh alone: the output's gradient (and h_n's, for the sequences that end at step t)
// and their tangents, plus the path from step t+1's pre-activation gradients through W_hh,
// with its tangent.
void gradient_reaching_h(const Steps& steps, int64_t t, const Tensor& u_y,
                         const OptionalTensor& u_hn, const OptionalTensor& u_y_dot,
                         const OptionalTensor& u_hn_dot, const Tensor& grads, const Tensor& w_hh,
                         const OptionalTensor& w_hh_dot, const Tensor& dh_both) {
  const int64_t going_on = steps.batch_after(t), ending = steps.batch(t) - going_on;
  if (going_on) {
    backward_product(steps.pair_at(grads, t + 1), w_hh, w_hh_dot,
                     dh_both.narrow(1, 0, going_on));
  }
  if (ending) {
    Tensor ends = dh_both.narrow(1, going_on, ending);
    for (int k = 0; k < 2; ++k) {
      const OptionalTensor& final_state = k ? u_hn_dot : u_hn;
      if (final_state) ends[k].copy_(final_state->narrow(0, going_on, ending));
      else ends[k].zero_();
    }
  }
  dh_both[0].add_(steps.at(u_y, t));
  if (u_y_dot) dh_both[1].add_(steps.at(*u_y_dot, t));
}

}  // namespace

void lstm_tangent_steps(const Tensor& pre_dot, const Tensor& gates, const Tensor& cells,
                        const Tensor& tanh_cells, const Tensor& c0, const Tensor& w_hh,
                        const OptionalTensor& h0_dot, const OptionalTensor& c0_dot,
                        const OptionalTensor& w_hr, const OptionalTensor& m_w_hr_dot,
                        const Tensor& c_dot, const Tensor& m_dot, const Tensor& h_dot,
                        const OptionalTensor& batch_sizes) {
  const Tensor c0_ = c0.contiguous(), c0_dot_ = contiguous_or_undefined(c0_dot);
  const Steps steps(cells, batch_sizes);
  const int64_t B = steps.width(), H = cells.size(-1), P = w_hh.size(1);
  check({{pre_dot, steps.sizes(4 * H)}, {gates, steps.sizes(4 * H)}, {cells, steps.sizes(H)},
         {tanh_cells, steps.sizes(H)}, {c0_, {B, H}}, {c0_dot_, {B, H}},
         {c_dot, steps.sizes(H)}, {m_dot, steps.sizes(H)}, {h_dot, steps.sizes(P)}}, pre_dot);
  LSTMTangentStep step{{gates.data_ptr(), pre_dot.data_ptr(), cells.data_ptr(),
                        tanh_cells.data_ptr(), c0_.data_ptr(), data_or_null(c0_dot_),
                        c_dot.data_ptr()},
                       m_dot.data_ptr(), {}, 0, H};
  Tensor h_last = h0_dot ? *h0_dot : Tensor();
  for (int64_t t = 0; t < steps.count(); ++t) {
    step.batch = steps.batch(t);
    if (h_last.defined()) steps.at(pre_dot, t).addmm_(h_last.narrow(0, 0, step.batch), w_hh.t());
    step.rows = steps.rows(t);
    units(pre_dot, step);
    if (w_hr) {
      Tensor h_t = steps.at(h_dot, t);
      at::mm_out(h_t, steps.at(m_dot, t), w_hr->t());
      if (m_w_hr_dot) h_t.add_(steps.at(*m_w_hr_dot, t));
    }
    h_last = steps.at(h_dot, t);
  }
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
                                 const OptionalTensor& dh_all, const Tensor& dc_first,
                                 const OptionalTensor& batch_sizes) {
  const Tensor c0_ = c0.contiguous(), c0_dot_ = contiguous_or_undefined(c0_dot);
  const Tensor u_cn_ = contiguous_or_undefined(u_cn);
  const Tensor u_cn_dot_ = contiguous_or_undefined(u_cn_dot);
  const Steps steps(cells, batch_sizes);
  const int64_t B = steps.width(), H = cells.size(-1), P = w_hh.size(1);
  check({{u_y, steps.sizes(P)}, {gates, steps.sizes(4 * H)}, {pre_dot, steps.sizes(4 * H)},
         {cells, steps.sizes(H)}, {tanh_cells, steps.sizes(H)}, {c0_, {B, H}},
         {c_dot, steps.sizes(H)}, {c0_dot_, {B, H}}, {u_cn_, {B, H}}, {u_cn_dot_, {B, H}},
         {grads, steps.pair_sizes(4 * H)}, {dc_first, {2, B, H}}}, u_y);
  check({{or_undefined(u_y_dot), steps.sizes(P)}, {or_undefined(u_hn_dot), {B, P}},
         {or_undefined(u_hn), {B, P}}}, u_y, /*through_pointers=*/false);
  // dh, dh' of the step, and with a projection dm, dm' (the cell output's).
  const Tensor dh_both = at::empty({2, B, P}, u_y.options());
  const Tensor dm_both = w_hr ? at::empty({2, B, H}, u_y.options()) : dh_both;
  const Tensor dc = carried(u_y, B, H);
  LSTMBackwardTangentStep step{{gates.data_ptr(), pre_dot.data_ptr(), cells.data_ptr(),
                                tanh_cells.data_ptr(), c0_.data_ptr(), data_or_null(c0_dot_),
                                c_dot.data_ptr()},
                               dm_both.data_ptr(), data_or_null(u_cn_), data_or_null(u_cn_dot_),
                               dc.data_ptr(), grads.data_ptr(), {}, 0, H, B};
  for (int64_t t = steps.count() - 1; t >= 0; --t) {
    step.batch = steps.batch(t);
    const Tensor dh = dh_both.narrow(1, 0, step.batch);
    gradient_reaching_h(steps, t, u_y, u_hn, u_y_dot, u_hn_dot, grads, w_hh, w_hh_dot, dh);
    if (w_hr) {
      steps.pair_at(*dh_all, t).copy_(dh);
      backward_product(dh, *w_hr, w_hr_dot, dm_both.narrow(1, 0, step.batch));
    }
    step.rows = steps.rows(t);
    units(u_y, step);
  }
  dc_first.copy_(dc);
}

void gru_tangent_steps(const Tensor& x_gates_dot, const Tensor& h_gates_dot, const Tensor& saved,
                       const Tensor& h_prev, const Tensor& w_hh, const OptionalTensor& h0_dot,
                       const Tensor& rz_dot, const Tensor& n_dot, const Tensor& h_dot,
                       const OptionalTensor& batch_sizes) {
  const Tensor h0_dot_ = contiguous_or_undefined(h0_dot);
  const Steps steps(h_prev, batch_sizes);
  const int64_t B = steps.width(), H = h_prev.size(-1);
  check({{x_gates_dot, steps.sizes(3 * H)}, {h_gates_dot, steps.sizes(3 * H)},
         {saved, steps.sizes(4 * H)}, {h_prev, steps.sizes(H)}, {h0_dot_, {B, H}},
         {rz_dot, steps.sizes(2 * H)}, {n_dot, steps.sizes(H)}, {h_dot, steps.sizes(H)}},
        h_dot);
  GRUTangentStep step{x_gates_dot.data_ptr(), h_gates_dot.data_ptr(), saved.data_ptr(),
                      h_prev.data_ptr(), nullptr, rz_dot.data_ptr(), n_dot.data_ptr(),
                      h_dot.data_ptr(), {}, 0, H};
  for (int64_t t = 0; t < steps.count(); ++t) {
    step.batch = steps.batch(t);
    const Tensor h_prev_dot = t ? steps.at(h_dot, t - 1).narrow(0, 0, step.batch) : h0_dot_;
    if (h_prev_dot.defined()) steps.at(h_gates_dot, t).addmm_(h_prev_dot, w_hh.t());
    step.h_prev_dot = data_or_null(h_prev_dot);
    step.rows = steps.rows(t);
    units(h_dot, step);
  }
}

void gru_backward_tangent_steps(const Tensor& u_y, const OptionalTensor& u_hn,
                                const OptionalTensor& u_y_dot, const OptionalTensor& u_hn_dot,
                                const Tensor& saved, const Tensor& h_prev, const Tensor& rz_dot,
                                const Tensor& n_dot, const Tensor& h_gates_dot,
                                const Tensor& h_prev_dot, const Tensor& w_hh,
                                const OptionalTensor& w_hh_dot, const Tensor& grads,
                                const Tensor& dh_first, const OptionalTensor& batch_sizes) {
  const Tensor u_hn_ = contiguous_or_undefined(u_hn);
  const Tensor u_y_dot_ = contiguous_or_undefined(u_y_dot);
  const Tensor u_hn_dot_ = contiguous_or_undefined(u_hn_dot);
  const Steps steps(h_prev, batch_sizes);
  const int64_t B = steps.width(), H = h_prev.size(-1);
  check({{u_y, steps.sizes(H)}, {u_hn_, {B, H}}, {u_y_dot_, steps.sizes(H)},
         {u_hn_dot_, {B, H}}, {saved, steps.sizes(4 * H)}, {h_prev, steps.sizes(H)},
         {rz_dot, steps.sizes(2 * H)}, {n_dot, steps.sizes(H)},
         {h_gates_dot, steps.sizes(3 * H)}, {h_prev_dot, steps.sizes(H)},
         {grads, steps.pair_sizes(4 * H)}, {dh_first, {2, B, H}}}, u_y);
  const Tensor through_w_hh = at::empty({2, B, H}, u_y.options());
  const Tensor dh = carried(u_y, B, H);
  GRUBackwardTangentStep step{u_y.data_ptr(), data_or_null(u_hn_), data_or_null(u_y_dot_),
                              data_or_null(u_hn_dot_), saved.data_ptr(), h_prev.data_ptr(),
                              rz_dot.data_ptr(), n_dot.data_ptr(), h_gates_dot.data_ptr(),
                              h_prev_dot.data_ptr(), through_w_hh.data_ptr(), dh.data_ptr(),
                              grads.data_ptr(), {}, 0, H, B};
  for (int64_t t = steps.count() - 1; t >= 0; --t) {
    // The gradients of the h gates are the first 3H of each row of step t+1's.
    if (const int64_t going_on = steps.batch_after(t)) {
      backward_product(steps.pair_at(grads, t + 1).narrow(2, 0, 3 * H), w_hh, w_hh_dot,
                       through_w_hh.narrow(1, 0, going_on));
    }
    step.batch = steps.batch(t);
    step.rows = steps.rows(t);
    units(u_y, step);
  }
  dh_first.copy_(dh);
}

void rnn_tangent_steps(const Tensor& pre_dot, const Tensor& d_act, const Tensor& w_hh,
                       const OptionalTensor& h0_dot, const Tensor& h_dot,
                       const OptionalTensor& batch_sizes) {
  const Steps steps(pre_dot, batch_sizes);
  check({{d_act, pre_dot.sizes().vec()}, {h_dot, pre_dot.sizes().vec()}}, pre_dot);
  Tensor h_last = h0_dot ? *h0_dot : Tensor();
  for (int64_t t = 0; t < steps.count(); ++t) {
    Tensor pre_t = steps.at(pre_dot, t), h_t = steps.at(h_dot, t);
    if (h_last.defined()) pre_t.addmm_(h_last.narrow(0, 0, steps.batch(t)), w_hh.t());
    at::mul_out(h_t, pre_t, steps.at(d_act, t));
    h_last = h_t;
  }
}

void rnn_backward_tangent_steps(const Tensor& u_y, const OptionalTensor& u_hn,
                                const OptionalTensor& u_y_dot, const OptionalTensor& u_hn_dot,
                                const Tensor& d_act, const OptionalTensor& d_act_dot,
                                const Tensor& w_hh, const OptionalTensor& w_hh_dot,
                                const Tensor& grads, const OptionalTensor& batch_sizes) {
  const Tensor d_act_dot_ = contiguous_or_undefined(d_act_dot);
  const Steps steps(d_act, batch_sizes);
  const int64_t B = steps.width(), H = d_act.size(-1);
  check({{u_y, steps.sizes(H)}, {d_act, steps.sizes(H)}, {d_act_dot_, steps.sizes(H)},
         {grads, steps.pair_sizes(H)}}, u_y);
  check({{or_undefined(u_y_dot), steps.sizes(H)}, {or_undefined(u_hn_dot), {B, H}},
         {or_undefined(u_hn), {B, H}}}, u_y, /*through_pointers=*/false);
  const Tensor dh_both = at::empty({2, B, H}, u_y.options());
  RNNBackwardTangentStep step{d_act.data_ptr(), data_or_null(d_act_dot_), dh_both.data_ptr(),
                              grads.data_ptr(), {}, 0, H, B};
  for (int64_t t = steps.count() - 1; t >= 0; --t) {
    step.batch = steps.batch(t);
    gradient_reaching_h(steps, t, u_y, u_hn, u_y_dot, u_hn_dot, grads, w_hh, w_hh_dot,
                        dh_both.narrow(1, 0, step.batch));
    step.rows = steps.rows(t);
    units(u_y, step);
  }
}

}  // namespace fusedrnn
