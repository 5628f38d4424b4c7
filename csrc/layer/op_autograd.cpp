// Autograd for the one-direction forward ops called as ops: the route of a program exported by
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

// The op `name`'s handle, typed by its schema, looked up once.
template <typename Signature>
const c10::TypedOperatorHandle<Signature>& op_named(const char* name) {
  static const c10::TypedOperatorHandle<Signature> handle =
      c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
  return handle;
}

using LSTMForward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const OptionalTensor&, const OptionalTensor&, bool, bool, const OptionalTensor&,
    const OptionalTensor&);
using LSTMBackward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const OptionalTensor&, const OptionalTensor&, const OptionalTensor&, const Tensor&,
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const Tensor&, bool, bool, const OptionalTensor&, const OptionalTensor&,
    const OptionalTensor&, bool, bool);
using GRUForward = std::tuple<Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptionalTensor&,
    const OptionalTensor&, bool, bool, const OptionalTensor&);
using GRUBackward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const OptionalTensor&, const OptionalTensor&, const Tensor&, const Tensor&, const Tensor&,
    const Tensor&, const Tensor&, const Tensor&, bool, bool, const OptionalTensor&, bool, bool);
using RNNForward = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                              const Tensor&, const OptionalTensor&,
                                              const OptionalTensor&, bool, bool,
                                              const OptionalTensor&);
using RNNBackward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
    const OptionalTensor&, const OptionalTensor&, const Tensor&, const Tensor&, const Tensor&,
    const Tensor&, const Tensor&, bool, bool, bool, const OptionalTensor&, bool, bool);

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
// torch.nn allows), then the activations. `inputs`: how many inputs come first.
void save(AutogradContext* ctx, std::vector<Tensor> inputs, const Tensor& output,
          std::initializer_list<Tensor> activations) {
  ctx->saved_data["inputs"] = static_cast<int64_t>(inputs.size());
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
        op_named<LSTMForward>("fusedrnn::lstm_forward")
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
        op_named<LSTMBackward>("fusedrnn::lstm_backward")
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
    auto [output, hn, saved] = op_named<GRUForward>("fusedrnn::gru_forward")
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
        op_named<GRUBackward>("fusedrnn::gru_backward")
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
    auto [output, hn] = op_named<RNNForward>("fusedrnn::rnn_forward")
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
        op_named<RNNBackward>("fusedrnn::rnn_backward")
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
    return op_named<LSTMForward>("fusedrnn::lstm_forward")
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
    return op_named<GRUForward>("fusedrnn::gru_forward")
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
    return op_named<RNNForward>("fusedrnn::rnn_forward")
        .call(input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, batch_sizes);
  }
  const variable_list r =
      RNNOpNode::apply(input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, batch_sizes);
  return {r[0], r[1]};
}

}  // namespace
}  // namespace fusedrnn

TORCH_LIBRARY_IMPL(fusedrnn, Autograd, m) {
  m.impl("lstm_forward", &fusedrnn::lstm_forward_autograd);
  m.impl("gru_forward", &fusedrnn::gru_forward_autograd);
  m.impl("rnn_forward", &fusedrnn::rnn_forward_autograd);
}
