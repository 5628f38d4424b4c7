// Autograd for the forward ops called as ops: the route of a program exported by
// torch.export, which records the ops themselves rather than fusedrnn's autograd.Functions
// (fusedrnn/ops.py) and nodes (direct.cpp) around them. Where a gradient may follow, the call
// becomes a node whose backward is the matching backward op; elsewhere, as inside the Functions,
// which call the ops with grad mode off, it passes straight to the kernels. The node's backward
// is first order: differentiating it again raises.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace fusedrnn {
namespace {

using at::Tensor;
using OptionalTensor = std::optional<Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Op's handle, typed by its signature. Op: a struct naming the op (`name`) and its C++
// signature (`Signature`). Looked up at each call (a table lookup, against microseconds a call):
// a handle kept in a static local of this template was shared by the GRU's and the RNN's pair
// ops, whose signatures are the same, in GCC's -O3 build.
template <typename Op>
c10::TypedOperatorHandle<typename Op::Signature> op() {
  return c10::Dispatcher::singleton().findSchemaOrThrow(Op::name, "").template typed<
      typename Op::Signature>();
}

struct LSTMForward {
  static constexpr const char* name = "fusedrnn::lstm_forward";
  using Signature = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
      const OptionalTensor&, const OptionalTensor&, bool, bool, const OptionalTensor&,
      const OptionalTensor&);
};
struct LSTMBackward {
  static constexpr const char* name = "fusedrnn::lstm_backward";
  using Signature = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
      const OptionalTensor&, const OptionalTensor&, const OptionalTensor&, const Tensor&,
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
      const Tensor&, bool, bool, const OptionalTensor&, const OptionalTensor&,
      const OptionalTensor&, bool, bool);
};
struct GRUForward {
  static constexpr const char* name = "fusedrnn::gru_forward";
  using Signature = std::tuple<Tensor, Tensor, Tensor>(
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptionalTensor&,
      const OptionalTensor&, bool, bool, const OptionalTensor&);
};
struct GRUBackward {
  static constexpr const char* name = "fusedrnn::gru_backward";
  using Signature = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
      const OptionalTensor&, const OptionalTensor&, const Tensor&, const Tensor&, const Tensor&,
      const Tensor&, const Tensor&, const Tensor&, bool, bool, const OptionalTensor&, bool, bool);
};
struct RNNForward {
  static constexpr const char* name = "fusedrnn::rnn_forward";
  using Signature = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                const Tensor&, const OptionalTensor&,
                                                const OptionalTensor&, bool, bool,
                                                const OptionalTensor&);
};
struct RNNBackward {
  static constexpr const char* name = "fusedrnn::rnn_backward";
  using Signature = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
      const OptionalTensor&, const OptionalTensor&, const Tensor&, const Tensor&, const Tensor&,
      const Tensor&, const Tensor&, bool, bool, bool, const OptionalTensor&, bool, bool);
};

// Whether the call needs a node: grad mode on, and a tensor argument that requires grad.
bool gradient_may_follow(std::initializer_list<OptionalTensor> tensors) {
  if (!c10::GradMode::is_enabled()) return false;
  for (const OptionalTensor& t : tensors)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

OptionalTensor present(const Tensor& t) { return t.defined() ? OptionalTensor(t) : std::nullopt; }

// The gradient of input i where autograd wants it.
Tensor if_needed(AutogradContext* ctx, size_t i, const Tensor& grad) {
  return ctx->needs_input_grad(i) ? grad : Tensor();
}

void refuse_second_order() {
  TORCH_CHECK(!c10::GradMode::is_enabled(),
              "fusedrnn: the backward of a fused op called as an op (as in a program from "
              "torch.export) cannot be differentiated again; call the fusedrnn module itself "
              "for double backward");
}

// Saved: the inputs, then a copy of the output (the caller may edit the output in place, as
// torch.nn allows), then the activations.
void save(AutogradContext* ctx, std::vector<Tensor> inputs, const Tensor& output,
          std::initializer_list<Tensor> activations) {
  inputs.push_back(output.clone());
  inputs.insert(inputs.end(), activations);
  ctx->save_for_backward(inputs);
  ctx->set_materialize_grads(false);  // a result's gradient that does not come costs nothing
}

// inputs: numbered as autograd numbers a node's inputs, among its tensor arguments that hold a
// tensor (an optional one left out shifts those after it).
bool any_needed(AutogradContext* ctx, std::initializer_list<size_t> inputs) {
  for (size_t i : inputs)
    if (ctx->needs_input_grad(i)) return true;
  return false;
}

struct LSTMOpNode : torch::autograd::Function<LSTMOpNode> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& h0,
                               const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                               const OptionalTensor& b_ih, const OptionalTensor& b_hh,
                               bool reverse, const OptionalTensor& batch_sizes,
                               const OptionalTensor& w_hr) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [output, hn, cn, gates, cells, unprojected] =
        op<LSTMForward>()
            .call(input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, true, batch_sizes, w_hr);
    save(ctx,
         {input, h0, c0, w_ih, w_hh, b_ih.value_or(Tensor()), batch_sizes.value_or(Tensor()),
          w_hr.value_or(Tensor())},
         output, {gates, cells, unprojected});
    ctx->saved_data["reverse"] = reverse;
    ctx->mark_non_differentiable({gates, cells, unprojected});
    return {output, hn, cn, gates, cells, unprojected};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    refuse_second_order();
    const variable_list s = ctx->get_saved_variables();
    const Tensor &input = s[0], &h0 = s[1], &c0 = s[2], &w_ih = s[3], &w_hh = s[4];
    const bool has_bias = s[5].defined();
    const OptionalTensor batch_sizes = present(s[6]), w_hr = present(s[7]);
    // Numbered: input, h0, c0, w_ih, w_hh, then b_ih and b_hh, batch_sizes and w_hr where given.
    const size_t w_hr_at = 5 + (has_bias ? 2 : 0) + (batch_sizes ? 1 : 0);
    const bool weights = any_needed(ctx, {3, 4}) || (has_bias && any_needed(ctx, {5, 6})) ||
                         (w_hr && any_needed(ctx, {w_hr_at}));
    auto [d_input, d_h0, d_c0, d_w_ih, d_w_hh, d_bias, d_w_hr] =
        op<LSTMBackward>()
            .call(present(grads[0]), present(grads[1]), present(grads[2]), input, h0, c0, w_ih,
                  w_hh, s[8], s[9], s[10], has_bias, ctx->saved_data["reverse"].toBool(),
                  batch_sizes, w_hr, present(s[11]), weights, ctx->needs_input_grad(1));
    const Tensor bias = has_bias && weights ? d_bias : Tensor();
    return {d_input, if_needed(ctx, 1, d_h0), d_c0, weights ? d_w_ih : Tensor(),
            weights ? d_w_hh : Tensor(), bias, bias, Tensor(), Tensor(),
            w_hr && weights ? d_w_hr : Tensor()};
  }
};

struct GRUOpNode : torch::autograd::Function<GRUOpNode> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& h0,
                               const Tensor& w_ih, const Tensor& w_hh, const OptionalTensor& b_ih,
                               const OptionalTensor& b_hh, bool reverse,
                               const OptionalTensor& batch_sizes) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [output, hn, saved] = op<GRUForward>()
                                   .call(input, h0, w_ih, w_hh, b_ih, b_hh, reverse, true,
                                         batch_sizes);
    save(ctx,
         {input, h0, w_ih, w_hh, b_ih.value_or(Tensor()), batch_sizes.value_or(Tensor())},
         output, {saved});
    ctx->saved_data["reverse"] = reverse;
    ctx->mark_non_differentiable({saved});
    return {output, hn, saved};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    refuse_second_order();
    const variable_list s = ctx->get_saved_variables();
    // Numbered: input, h0, w_ih, w_hh, then b_ih and b_hh where given.
    const bool has_bias = s[4].defined();
    const bool weights = any_needed(ctx, {2, 3}) || (has_bias && any_needed(ctx, {4, 5}));
    auto [d_input, d_h0, d_w_ih, d_w_hh, d_b_ih, d_b_hh] =
        op<GRUBackward>()
            .call(present(grads[0]), present(grads[1]), s[0], s[1], s[2], s[3], s[6], s[7],
                  has_bias, ctx->saved_data["reverse"].toBool(), present(s[5]), weights,
                  ctx->needs_input_grad(1));
    const Tensor none;
    if (!weights) return {d_input, if_needed(ctx, 1, d_h0), none, none, none, none, none, none};
    return {d_input, if_needed(ctx, 1, d_h0), d_w_ih, d_w_hh, has_bias ? d_b_ih : none,
            has_bias ? d_b_hh : none, none, none};
  }
};

struct RNNOpNode : torch::autograd::Function<RNNOpNode> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& h0,
                               const Tensor& w_ih, const Tensor& w_hh, const OptionalTensor& b_ih,
                               const OptionalTensor& b_hh, bool relu, bool reverse,
                               const OptionalTensor& batch_sizes) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [output, hn] = op<RNNForward>()
                            .call(input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, batch_sizes);
    save(ctx,
         {input, h0, w_ih, w_hh, b_ih.value_or(Tensor()), batch_sizes.value_or(Tensor())},
         output, {});
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["reverse"] = reverse;
    return {output, hn};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    refuse_second_order();
    const variable_list s = ctx->get_saved_variables();
    const bool has_bias = s[4].defined();  // numbered as the GRU's
    const bool weights = any_needed(ctx, {2, 3}) || (has_bias && any_needed(ctx, {4, 5}));
    auto [d_input, d_h0, d_w_ih, d_w_hh, d_bias] =
        op<RNNBackward>()
            .call(present(grads[0]), present(grads[1]), s[0], s[1], s[2], s[3], s[6], has_bias,
                  ctx->saved_data["relu"].toBool(), ctx->saved_data["reverse"].toBool(),
                  present(s[5]), weights, ctx->needs_input_grad(1));
    const Tensor bias = has_bias && weights ? d_bias : Tensor();
    return {d_input, if_needed(ctx, 1, d_h0), weights ? d_w_ih : Tensor(),
            weights ? d_w_hh : Tensor(), bias, bias, Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_autograd(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
    const Tensor& w_hh, const OptionalTensor& b_ih, const OptionalTensor& b_hh, bool reverse,
    bool training, const OptionalTensor& batch_sizes, const OptionalTensor& w_hr) {
  if (!gradient_may_follow({input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return op<LSTMForward>()
        .call(input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, training, batch_sizes, w_hr);
  }
  const variable_list r =
      LSTMOpNode::apply(input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes, w_hr);
  return {r[0], r[1], r[2], r[3], r[4], r[5]};
}

std::tuple<Tensor, Tensor, Tensor> gru_forward_autograd(
    const Tensor& input, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
    const OptionalTensor& b_ih, const OptionalTensor& b_hh, bool reverse, bool training,
    const OptionalTensor& batch_sizes) {
  if (!gradient_may_follow({input, h0, w_ih, w_hh, b_ih, b_hh})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return op<GRUForward>()
        .call(input, h0, w_ih, w_hh, b_ih, b_hh, reverse, training, batch_sizes);
  }
  const variable_list r =
      GRUOpNode::apply(input, h0, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes);
  return {r[0], r[1], r[2]};
}

std::tuple<Tensor, Tensor> rnn_forward_autograd(
    const Tensor& input, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
    const OptionalTensor& b_ih, const OptionalTensor& b_hh, bool relu, bool reverse,
    const OptionalTensor& batch_sizes) {
  if (!gradient_may_follow({input, h0, w_ih, w_hh, b_ih, b_hh})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return op<RNNForward>()
        .call(input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, batch_sizes);
  }
  const variable_list r =
      RNNOpNode::apply(input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, batch_sizes);
  return {r[0], r[1]};
}

// ---- both directions --------------------------------------------------------------------
// Where a gradient may follow, a pair op runs as its two directions' one-direction ops, whose
// nodes (above) give the gradients: the results, the forward direction's then the reverse's, are
// those the pair op lists. Without a gradient the pair op runs as it is, both directions side by
// side on the CPU.
using Tensors = at::TensorList;
using OptionalTensors = c10::List<OptionalTensor>;
struct LSTMPairForward {
  static constexpr const char* name = "fusedrnn::lstm_forward_pair";
  using Signature = std::vector<Tensor>(const Tensor&, Tensors, Tensors, Tensors, Tensors,
                                          const OptionalTensors&, const OptionalTensors&, bool,
                                          const OptionalTensor&, const OptionalTensors&);
};
struct GRUPairForward {
  static constexpr const char* name = "fusedrnn::gru_forward_pair";
  using Signature = std::vector<Tensor>(const Tensor&, Tensors, Tensors, Tensors,
                                             const OptionalTensors&, const OptionalTensors&, bool,
                                             const OptionalTensor&);
};
struct RNNPairForward {
  static constexpr const char* name = "fusedrnn::rnn_forward_pair";
  using Signature = std::vector<Tensor>(const Tensor&, Tensors, Tensors, Tensors,
                                             const OptionalTensors&, const OptionalTensors&, bool,
                                             const OptionalTensor&);
};

bool pair_gradient_may_follow(const Tensor& input, std::initializer_list<Tensors> lists,
                              std::initializer_list<const OptionalTensors*> optional_lists) {
  if (!c10::GradMode::is_enabled()) return false;
  if (input.requires_grad()) return true;
  for (Tensors list : lists)
    for (const Tensor& t : list)
      if (t.requires_grad()) return true;
  for (const OptionalTensors* list : optional_lists)
    for (const OptionalTensor& t : *list)
      if (t && t->requires_grad()) return true;
  return false;
}

// Pair's kernel where no gradient may follow; else each direction's one-direction op,
// direction(d) for d = 0 (forward) and 1 (reverse), their results in one list.
template <typename Pair, typename Direction, typename... Arguments>
std::vector<Tensor> pair_or_directions(bool gradient, const Direction& direction,
                                       const Arguments&... pair_arguments) {
  if (!gradient) {
    at::AutoDispatchBelowADInplaceOrView below;
    return op<Pair>().call(pair_arguments...);
  }
  std::vector<Tensor> results;
  for (size_t d = 0; d < 2; ++d)
    std::apply([&](const auto&... t) { (results.push_back(t), ...); }, direction(d));
  return results;
}

std::vector<Tensor> lstm_forward_pair_autograd(const Tensor& input, Tensors h0, Tensors c0,
                                               Tensors w_ih, Tensors w_hh,
                                               const OptionalTensors& b_ih,
                                               const OptionalTensors& b_hh, bool training,
                                               const OptionalTensor& batch_sizes,
                                               const OptionalTensors& w_hr) {
  return pair_or_directions<LSTMPairForward>(
      pair_gradient_may_follow(input, {h0, c0, w_ih, w_hh}, {&b_ih, &b_hh, &w_hr}),
      [&](size_t d) {
        return op<LSTMForward>().call(input, h0[d], c0[d], w_ih[d], w_hh[d], b_ih.get(d),
                                      b_hh.get(d), d == 1, training, batch_sizes, w_hr.get(d));
      },
      input, h0, c0, w_ih, w_hh, b_ih, b_hh, training, batch_sizes, w_hr);
}

std::vector<Tensor> gru_forward_pair_autograd(const Tensor& input, Tensors h0, Tensors w_ih,
                                              Tensors w_hh, const OptionalTensors& b_ih,
                                              const OptionalTensors& b_hh, bool training,
                                              const OptionalTensor& batch_sizes) {
  return pair_or_directions<GRUPairForward>(
      pair_gradient_may_follow(input, {h0, w_ih, w_hh}, {&b_ih, &b_hh}),
      [&](size_t d) {
        return op<GRUForward>().call(input, h0[d], w_ih[d], w_hh[d], b_ih.get(d), b_hh.get(d),
                                     d == 1, training, batch_sizes);
      },
      input, h0, w_ih, w_hh, b_ih, b_hh, training, batch_sizes);
}

std::vector<Tensor> rnn_forward_pair_autograd(const Tensor& input, Tensors h0, Tensors w_ih,
                                              Tensors w_hh, const OptionalTensors& b_ih,
                                              const OptionalTensors& b_hh, bool relu,
                                              const OptionalTensor& batch_sizes) {
  return pair_or_directions<RNNPairForward>(
      pair_gradient_may_follow(input, {h0, w_ih, w_hh}, {&b_ih, &b_hh}),
      [&](size_t d) {
        return op<RNNForward>().call(input, h0[d], w_ih[d], w_hh[d], b_ih.get(d), b_hh.get(d),
                                     relu, d == 1, batch_sizes);
      },
      input, h0, w_ih, w_hh, b_ih, b_hh, relu, batch_sizes);
}

}  // namespace
}  // namespace fusedrnn

TORCH_LIBRARY_IMPL(fusedrnn, Autograd, m) {
  m.impl("lstm_forward", &fusedrnn::lstm_forward_autograd);
  m.impl("gru_forward", &fusedrnn::gru_forward_autograd);
  m.impl("rnn_forward", &fusedrnn::rnn_forward_autograd);
  m.impl("lstm_forward_pair", &fusedrnn::lstm_forward_pair_autograd);
  m.impl("gru_forward_pair", &fusedrnn::gru_forward_pair_autograd);
  m.impl("rnn_forward_pair", &fusedrnn::rnn_forward_pair_autograd);
}
