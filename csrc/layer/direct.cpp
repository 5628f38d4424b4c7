// The direct calls (direct.h): the layer loop of modules.py's _run_layers, in C++, on the layer
// functions of layer.h; and a cell's step as an autograd node of its own. The one file of
// layer/ that uses torch's autograd API (torch/csrc/autograd), for that node.
#include "direct.h"

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>

#include "layer.h"
#include "sequence.h"

namespace fusedrnn {

namespace {

enum class Cell { kLstm, kGru, kRnnTanh, kRnnRelu };

// nn.RNNBase's modes, in Cell's order.
constexpr const char* kCellNames[] = {"LSTM", "GRU", "RNN_TANH", "RNN_RELU"};

Cell cell_named(const std::string& name) {
  for (int cell = 0; cell < 4; ++cell)
    if (name == kCellNames[cell]) return static_cast<Cell>(cell);
  TORCH_CHECK(false, "fusedrnn: unknown cell '", name, "'");
}

PythonLayerBackward& python_layer_backward() {
  static PythonLayerBackward backward;
  return backward;
}

size_t state_count(Cell cell) { return cell == Cell::kLstm ? 2 : 1; }  // h, and c

// Where the activations lie in what RecurrenceNode keeps: the output, then the LSTM's gates
// (i, f, g, o) and cells, or the GRU's r, z, n and h W_hn^T + b_hn; the RNN's are its output.
size_t activations_at(Cell cell) {
  return cell == Cell::kLstm || cell == Cell::kGru ? 1 : 0;
}

// How many activations a layer's forward keeps for its backward beside its output
// (one_direction's `kept`): the LSTM's gates and cells (and its output before the projection,
// where it has one), the GRU's saved gates, none for the RNN.
size_t activations_kept(Cell cell, bool projection) {
  return cell == Cell::kLstm ? 2 + projection : cell == Cell::kGru ? 1 : 0;
}

// A plain strided CPU tensor: no subclass with a dispatch key of its own, no lazy negation, no
// functorch wrapper.
bool plain_cpu_tensor(const Tensor& t) {
  using c10::DispatchKey;
  static const c10::DispatchKeySet plain{DispatchKey::CPU, DispatchKey::AutogradCPU,
                                         DispatchKey::ADInplaceOrView, DispatchKey::AutocastCPU};
  return t.is_cpu() && t.layout() == at::kStrided && (t.key_set() | plain) == plain;
}

// Whether the call may skip the dispatcher (direct.h): nothing watches or transforms ops, every
// tensor is plain (plain_cpu_tensor), and no gradient can follow, unless `gradient_may_follow`.
bool may_skip_dispatcher(const Tensor& input, const std::vector<Tensor>& hx,
                         const std::vector<Tensor>& weights, bool gradient_may_follow = false) {
  using c10::DispatchKey;
  // What eager calls always hold: a dispatch mode, a functorch level or the Python dispatcher
  // adds to the included keys; autocast removes its key from the excluded ones.
  static const c10::DispatchKeySet quiet{DispatchKey::BackendSelect,
                                         DispatchKey::ADInplaceOrView};
  const auto thread = c10::impl::tls_local_dispatch_key_set();
  if ((thread.included_ | quiet) != quiet || !thread.excluded_.has(DispatchKey::AutocastCPU) ||
      at::hasCallbacks())
    return false;
  const bool grad_mode = c10::GradMode::is_enabled() && !gradient_may_follow;
  const auto plain_tensor = [&](const Tensor& t) {
    return plain_cpu_tensor(t) && !(grad_mode && t.requires_grad());
  };
  return plain_tensor(input) && std::all_of(hx.begin(), hx.end(), plain_tensor) &&
         std::all_of(weights.begin(), weights.end(), plain_tensor);
}

// t's memory under other sizes and strides, as a tensor of its own rather than a view that
// autograd tracks (select's and unsqueeze's view bookkeeping took a seventh of a one-step
// call): for an argument the call only reads, and that never leaves it.
Tensor read_only_alias(const Tensor& t, at::IntArrayRef sizes, at::IntArrayRef strides,
                       int64_t offset) {
  auto impl = c10::make_intrusive<c10::TensorImpl>(c10::Storage(t.storage()), t.key_set(),
                                                   t.dtype());
  impl->set_sizes_and_strides(sizes, strides, offset);
  return Tensor(std::move(impl));
}

// state[unit] of a state [L*D, B, W].
Tensor unit_of(const Tensor& state, int64_t unit) {
  return read_only_alias(state, state.sizes().slice(1), state.strides().slice(1),
                         state.storage_offset() + unit * state.stride(0));
}

// An unbatched tensor [..., F] as a batch of one, [..., 1, F] (torch.nn's unsqueeze).
Tensor with_batch_of_one(const Tensor& t) {
  std::vector<int64_t> sizes = t.sizes().vec(), strides = t.strides().vec();
  sizes.insert(sizes.end() - 1, 1);
  strides.insert(strides.end() - 1, t.size(-1) * t.stride(-1));
  return read_only_alias(t, sizes, strides, t.storage_offset());
}

// rows [B, I] as the one step of a sequence, [1, B, I].
Tensor one_step(const Tensor& rows) {
  return read_only_alias(rows, {1, rows.size(0), rows.size(1)},
                         {rows.size(0) * rows.stride(0), rows.stride(0), rows.stride(1)},
                         rows.storage_offset());
}

// A result under other sizes of the same elements, as torch.nn's unsqueeze or squeeze give it:
// the ops' fresh result reshaped in place, where a view would need autograd's bookkeeping.
Tensor reshaped(Tensor result, at::IntArrayRef sizes) {
  if (result.use_count() != 1 || !result.is_contiguous()) return result.reshape(sizes);
  result.unsafeGetTensorImpl()->set_sizes_contiguous(sizes);
  return result;
}

// One layer's weights in one_direction's order, from `w` (w_ih, w_hh, then b_ih, b_hh where
// `bias`, then w_hr where `projection`): w_ih, w_hh, b_ih, b_hh, w_hr, absent ones undefined.
std::vector<OptionalTensor> layer_weights(const Tensor* w, bool bias, bool projection) {
  std::vector<OptionalTensor> out{w[0], w[1], std::nullopt, std::nullopt, std::nullopt};
  if (bias) out[2] = w[2], out[3] = w[3];
  if (projection) out[4] = w[bias ? 4 : 2];
  return out;
}

// Zero initial states for `batch` rows, as torch.nn's: h as wide as w_hh's input (P), c as the
// cell (H); one tensor for both where they match, read only.
std::vector<Tensor> zero_states(Cell cell, int64_t batch, const Tensor& w_hh,
                                const at::TensorOptions& options) {
  const int64_t width = w_hh.size(1);
  std::vector<Tensor> zeros{fresh({batch, width}, options).zero_()};
  if (cell == Cell::kLstm) {
    const int64_t cell_width = w_hh.size(0) / 4;
    zeros.push_back(cell_width == width ? zeros[0] : fresh({batch, cell_width}, options).zero_());
  }
  return zeros;
}

// One layer in one direction. states: h0 (and c0); weights: w_ih, w_hh, b_ih, b_hh (undefined
// without bias), w_hr (undefined without a projection); batch_sizes: a PackedSequence's, where x
// is its data [rows, I]. With `kept`, the layer runs in training and kept receives what its
// backward reads beside the inputs and the output (the LSTM's gates and cells, and its output
// before the projection where w_hr is given; the GRU's saved activations; nothing for the RNN).
// -> output, new states.
std::pair<Tensor, std::vector<Tensor>> one_direction(Cell cell, const Tensor& x,
                                                     const std::vector<Tensor>& states,
                                                     const std::vector<OptionalTensor>& w,
                                                     bool reverse,
                                                     std::vector<Tensor>* kept = nullptr,
                                                     const OptionalTensor& batch_sizes = {}) {
  const bool training = kept != nullptr;
  switch (cell) {
    case Cell::kLstm: {
      auto [output, hn, cn, gates, cells, unprojected] =
          lstm_forward(x, states[0], states[1], *w[0], *w[1], w[2], w[3], reverse, training,
                       batch_sizes, w[4]);
      if (training) *kept = w[4] ? std::vector<Tensor>{gates, cells, unprojected}
                                 : std::vector<Tensor>{gates, cells};
      return {output, {hn, cn}};
    }
    case Cell::kGru: {
      auto [output, hn, saved] =
          gru_forward(x, states[0], *w[0], *w[1], w[2], w[3], reverse, training, batch_sizes);
      if (training) *kept = {saved};
      return {output, {hn}};
    }
    default: {
      auto [output, hn] = rnn_forward(x, states[0], *w[0], *w[1], w[2], w[3],
                                      cell == Cell::kRnnRelu, reverse, batch_sizes);
      if (training) kept->clear();
      return {output, {hn}};
    }
  }
}

// Both directions of a layer in one call (the *_pair ops, side by side on two threads). With
// `kept`, the layer runs in training and kept[d] receives what direction d's backward reads
// beside the inputs and the output, as one_direction's; batch_sizes as one_direction's. -> each
// direction's output and new states.
std::vector<std::pair<Tensor, std::vector<Tensor>>> both_directions(
    Cell cell, const Tensor& x, const std::vector<Tensor> (&states)[2],
    const std::vector<OptionalTensor> (&w)[2], std::vector<Tensor> (*kept)[2] = nullptr,
    const OptionalTensor& batch_sizes = {}) {
  const bool training = kept != nullptr;
  const auto list = [&](size_t k) { return std::vector<Tensor>{states[0][k], states[1][k]}; };
  const auto weight = [&](size_t k) { return std::vector<Tensor>{*w[0][k], *w[1][k]}; };
  const auto optional = [&](size_t k) { return OptionalTensors({w[0][k], w[1][k]}); };
  std::vector<Tensor> flat;
  size_t per_direction;  // results of each direction in the flat list
  switch (cell) {
    case Cell::kLstm:  // output, hn, cn, gates, cells, unprojected
      flat = lstm_forward_pair(x, list(0), list(1), weight(0), weight(1), optional(2),
                               optional(3), training, batch_sizes, optional(4));
      per_direction = 6;
      break;
    case Cell::kGru:  // output, hn, saved
      flat = gru_forward_pair(x, list(0), weight(0), weight(1), optional(2), optional(3),
                              training, batch_sizes);
      per_direction = 3;
      break;
    default:  // output, hn
      flat = rnn_forward_pair(x, list(0), weight(0), weight(1), optional(2), optional(3),
                              cell == Cell::kRnnRelu, batch_sizes);
      per_direction = 2;
  }
  const size_t count = state_count(cell);
  std::vector<std::pair<Tensor, std::vector<Tensor>>> results(2);
  for (size_t d = 0; d < 2; ++d) {
    const auto first = flat.begin() + d * per_direction;
    results[d] = {first[0], std::vector<Tensor>(first + 1, first + 1 + count)};
    const auto activations = first + 1 + count;  // after the output and the states
    if (training)
      (*kept)[d].assign(activations, activations + activations_kept(cell, w[d][4].has_value()));
  }
  return results;
}

// The gradients of one step's inputs (x [B, I], h0 [B, H], w_ih, w_hh, and b_ih, b_hh where
// there are) from those of its products' sums x W_ih^T + b_ih and h0 W_hh^T + b_hh, in ATen's
// ops (which record their graph under create_graph). -> one per step tensor, undefined unless
// needed.
std::vector<Tensor> through_products(const Tensor& to_input, const Tensor& to_hidden,
                                     at::TensorList step, const std::vector<bool>& needed) {
  const Tensor &x = step[0], &h0 = step[1], &w_ih = step[2], &w_hh = step[3];
  const bool has_bias = step.size() > 4;
  return {needed[0] ? to_input.mm(w_ih) : Tensor(),
          needed[1] ? to_hidden.mm(w_hh) : Tensor(),
          needed[2] ? to_input.t().mm(x) : Tensor(),
          needed[3] ? to_hidden.t().mm(h0) : Tensor(),
          has_bias && needed[4] ? to_input.sum(0) : Tensor(),
          has_bias && needed[5] ? to_hidden.sum(0) : Tensor()};
}

// a + b, where either may be undefined (no gradient).
Tensor sum_of(const Tensor& a, const Tensor& b) {
  return !a.defined() ? b : !b.defined() ? a : a + b;
}

// Which of a node's `inputs` need a gradient in the running backward.
std::vector<bool> inputs_needing_grad(torch::autograd::AutogradContext* ctx, size_t inputs) {
  std::vector<bool> needed(inputs);
  for (size_t i = 0; i < inputs; ++i) needed[i] = ctx->needs_input_grad(i);
  return needed;
}

bool any_defined(const std::vector<Tensor>& grads) {
  return std::any_of(grads.begin(), grads.end(), [](const Tensor& g) { return g.defined(); });
}

// Whether a node's backward is not the fused ops' to give: a create_graph backward (or
// torch.func's) needs gradients that are differentiable, and one under vmap gets batched
// gradients, which the fused ops cannot take.
bool beyond_fused_ops(const std::vector<Tensor>& grads) {
  return c10::GradMode::is_enabled() ||
         std::any_of(grads.begin(), grads.end(),
                     [](const Tensor& g) { return g.defined() && !plain_cpu_tensor(g); });
}

// How a layer node's tensors are laid out, an argument of the nodes' forward that is no input of
// their graph (autograd sees only tensors): batch_sizes where the input is a PackedSequence's
// data; `projection` where each direction's weights end with the LSTM's w_hr.
struct LayerLayout {
  OptionalTensor batch_sizes;
  bool projection = false;
};

constexpr const char *kBatchSizes = "batch_sizes", *kProjection = "projection";

void save_layout(torch::autograd::AutogradContext* ctx, const LayerLayout& layout) {
  if (layout.batch_sizes) ctx->saved_data[kBatchSizes] = *layout.batch_sizes;
  ctx->saved_data[kProjection] = layout.projection;
}

LayerLayout saved_layout(torch::autograd::AutogradContext* ctx) {
  const auto found = ctx->saved_data.find(kBatchSizes);
  return {found == ctx->saved_data.end() ? std::nullopt
                                         : OptionalTensor(found->second.toTensor()),
          ctx->saved_data[kProjection].toBool()};
}

// Whether a RecurrenceNode runs over a sequence, whose backward may go to Python
// (backward_in_python): a layer's over more than one step, packed rows or a projection.
// RecurrenceNode::differentiable takes the rest, a single padded step without a projection.
bool over_a_sequence(bool layer, const LayerLayout& layout, const Tensor& x) {
  return layer && (layout.batch_sizes || layout.projection || x.size(0) > 1);
}

// Set in a layer node's context once a create_graph backward of it ran in Python: from then
// on every backward of it does, as its second-order pass may leave it the pass's second half
// (ops.py's _leave_to_layer), which only Python's backward takes up.
constexpr const char* kInPython = "in_python";

// A layer node's backward over a sequence by the Python Function's own (python_layer_backward),
// which differentiates the fused backward through fusedrnn/second_order.py's pass. `pair`: the
// node runs both directions (LayerPairNode). result_grads: the gradients of its outputs and
// final states.
std::vector<Tensor> backward_in_python(torch::autograd::AutogradContext* ctx, Cell cell,
                                       bool pair, const std::vector<Tensor>& saved,
                                       const std::vector<Tensor>& result_grads,
                                       const std::vector<bool>& needed) {
  TORCH_CHECK(python_layer_backward(), "fusedrnn: the layer node's backward needs Python");
  if (c10::GradMode::is_enabled()) ctx->saved_data[kInPython] = true;
  // The node itself, alive while its backward runs (keep_node_address).
  auto node = c10::intrusive_ptr<torch::autograd::Node>::reclaim_copy(
      reinterpret_cast<torch::autograd::Node*>(ctx->saved_data["node"].toInt()));
  return python_layer_backward()(kCellNames[static_cast<int>(cell)], pair, node, saved,
                                 result_grads, needed, saved_layout(ctx).batch_sizes);
}

}  // namespace

// A cell's step where a gradient may follow, as one autograd node in C++ (direct_cell_step), or a
// one-direction layer's whole call (`layer`, direct_layer_node: any T). Its tensors, in order:
// x [B, I] or [I] (a layer's: [T, B, I]), h (and c for the LSTM), w_ih, w_hh (and b_ih, b_hh
// where has_bias; a layer's w_hr last where layout.projection); the LSTM's zero states, where the
// call gave none, as tensors that need no gradient. -> the new h (and c), shaped as x is; a
// layer's output [T, B, H] before them; last, the activations (activations_at) [T, B, 4H] or
// [T, B, H], which the caller drops. Saved as an output, they are differentiable in a
// create_graph backward of a single step: the backward of that backward comes back to this node
// once, with the states' gradients (one set of products, as torch.nn's graph takes), not through
// a node of their own.
struct RecurrenceNode : torch::autograd::Function<RecurrenceNode> {
  using Context = torch::autograd::AutogradContext;
  using Variables = torch::autograd::variable_list;

  static Variables forward(Context* ctx, int64_t cell_index, bool has_bias, bool layer,
                           at::TensorList tensors, const LayerLayout& layout) {
    const Cell cell = static_cast<Cell>(cell_index);
    const size_t count = state_count(cell);
    const bool batched = layer || tensors[0].dim() == 2;
    const auto rows = [&](const Tensor& t) { return batched ? t : with_batch_of_one(t); };
    const Tensor step = layer ? tensors[0] : one_step(rows(tensors[0]));
    std::vector<Tensor> states;
    for (size_t k = 0; k < count; ++k) states.push_back(rows(tensors[1 + k]));
    const std::vector<OptionalTensor> w =
        layer_weights(&tensors[1 + count], has_bias, layout.projection);
    // kept: what the backward reads beside the inputs, the output first.
    std::vector<Tensor> kept;
    auto [output, results] = one_direction(cell, step, states, w, false, &kept,
                                           layout.batch_sizes);
    kept.insert(kept.begin(), output);
    if (layer) {  // the output returned, and a copy kept: the caller may edit it in place
      results.insert(results.begin(), kept[0]);
      kept[0] = kept[0].clone();
    }
    results.push_back(kept[activations_at(cell)]);
    std::vector<Tensor> saved(tensors.begin(), tensors.end());
    saved.insert(saved.end(), kept.begin(), kept.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["cell"] = cell_index;
    ctx->saved_data["layer"] = layer;
    ctx->saved_data["inputs"] = static_cast<int64_t>(tensors.size());
    ctx->saved_data["bias"] = has_bias;
    save_layout(ctx, layout);
    ctx->set_materialize_grads(false);  // a state's gradient that does not come costs nothing
    if (!batched)
      for (size_t k = 0; k + 1 < results.size(); ++k) {
        const int64_t width = results[k].size(1);  // read before the move
        results[k] = reshaped(std::move(results[k]), {width});
      }
    return results;
  }

  // grads: those of the results, undefined where none flows. -> one per forward argument.
  static Variables backward(Context* ctx, Variables grads) {
    const Cell cell = static_cast<Cell>(ctx->saved_data["cell"].toInt());
    const bool layer = ctx->saved_data["layer"].toBool();
    const Variables saved = ctx->get_saved_variables();
    const size_t inputs = ctx->saved_data["inputs"].toInt();
    const bool has_bias = ctx->saved_data["bias"].toBool();
    const std::vector<bool> needed = inputs_needing_grad(ctx, inputs);
    const bool any_grad = any_defined(grads);
    // Beyond the fused ops (beyond_fused_ops), and the activations' gradient (the backward of
    // a create_graph backward), which they do not take: a single step's go through ATen's ops,
    // a sequence's through the Python Functions' backward (backward_in_python).
    const bool differentiated = beyond_fused_ops(grads) || grads.back().defined();
    const LayerLayout layout = saved_layout(ctx);
    Variables input_grads;
    if (ctx->saved_data.count(kInPython) ||
        (over_a_sequence(layer, layout, saved[0]) && differentiated)) {
      // The output's and the states'; the activations' gradient comes only to a single step.
      const Variables result_grads(grads.begin(), grads.end() - 1);
      input_grads = backward_in_python(ctx, cell, false, saved, result_grads, needed);
    } else if (!any_grad) {
      input_grads = Variables(inputs);
    } else if (differentiated) {
      input_grads = differentiable(cell, layer, saved, grads, needed);
    } else {
      input_grads = fused(cell, has_bias, layer, saved, grads, needed, layout);
    }
    Variables result(3);  // none for cell_index, has_bias and layer
    result.insert(result.end(), input_grads.begin(), input_grads.end());
    result.emplace_back();  // nor for layout
    return result;
  }

 private:
  // The fused backward op's gradients, one per input (undefined where not needed).
  static Variables fused(Cell cell, bool has_bias, bool layer, const Variables& saved,
                         const Variables& grads, const std::vector<bool>& needed,
                         const LayerLayout& layout) {
    const auto& [batch_sizes, projection] = layout;
    const size_t count = state_count(cell), inputs = needed.size();
    const Tensor& x = saved[0];
    const bool batched = layer || x.dim() == 2;
    const auto rows = [&](const Tensor& t) { return batched ? t : with_batch_of_one(t); };
    // The gradient of result k: the output's (a layer's), then the states'.
    const auto result_grad = [&](size_t k) {
      return k < grads.size() && grads[k].defined() ? OptionalTensor(rows(grads[k]))
                                                    : std::nullopt;
    };
    const OptionalTensor grad_output = layer ? result_grad(0) : std::nullopt;
    const auto grad_of = [&](size_t state) { return result_grad(state + (layer ? 1 : 0)); };
    const Tensor step = layer ? x : one_step(rows(x)), h0 = rows(saved[1]);
    const Tensor &w_ih = saved[1 + count], &w_hh = saved[2 + count];
    const Tensor* kept = &saved[inputs];
    const bool weight_grads =
        std::any_of(needed.begin() + 1 + count, needed.end(), [](bool n) { return n; });
    const bool h0_grad = needed[1];
    std::vector<Tensor> got;  // one per input, in their order
    switch (cell) {
      case Cell::kLstm: {
        const OptionalTensor w_hr = projection ? OptionalTensor(saved[inputs - 1]) : std::nullopt;
        const OptionalTensor unprojected = projection ? OptionalTensor(kept[3]) : std::nullopt;
        auto [dx, dh, dc, dw_ih, dw_hh, d_bias, dw_hr] = lstm_backward(
            grad_output, grad_of(0), grad_of(1), step, h0, rows(saved[2]), w_ih, w_hh,
            kept[0], kept[1], kept[2], has_bias, false, batch_sizes, w_hr, unprojected,
            weight_grads, h0_grad);
        got = {dx, dh, dc, dw_ih, dw_hh};
        if (has_bias) got.insert(got.end(), {d_bias, d_bias});
        if (projection) got.push_back(dw_hr);
        break;
      }
      case Cell::kGru: {
        auto [dx, dh, dw_ih, dw_hh, db_ih, db_hh] =
            gru_backward(grad_output, grad_of(0), step, h0, w_ih, w_hh, kept[0], kept[1],
                         has_bias, false, batch_sizes, weight_grads, h0_grad);
        got = {dx, dh, dw_ih, dw_hh, db_ih, db_hh};
        break;
      }
      default: {
        auto [dx, dh, dw_ih, dw_hh, d_bias] =
            rnn_backward(grad_output, grad_of(0), step, h0, w_ih, w_hh, kept[0], has_bias,
                         cell == Cell::kRnnRelu, false, batch_sizes, weight_grads, h0_grad);
        got = {dx, dh, dw_ih, dw_hh, d_bias, d_bias};
      }
    }
    Variables result(inputs);
    for (size_t i = 0; i < inputs; ++i) {
      if (!needed[i]) continue;
      // x's and the states' as the caller gave them (unbatched: [I], [H]); the weights' as is.
      result[i] = i <= count ? got[i].view(saved[i].sizes()) : got[i];
    }
    return result;
  }

  // The gradients in ATen's ops, on the saved inputs and the activations saved as this node's
  // output: differentiable under create_graph with respect to every input (a penalty on x's
  // gradient differentiates it with respect to the weights too), and batched under vmap where
  // grads are. Gate functions by their own backward ops (sigmoid_backward, tanh_backward), which
  // are differentiable, one op each.
  static Variables differentiable(Cell cell, bool layer, const Variables& saved,
                                  const Variables& grads, const std::vector<bool>& needed) {
    const size_t inputs = needed.size(), count = state_count(cell);
    // In the activations' dtype: float32 for a half-precision LSTM or GRU, which keeps its gates
    // in float32 (the RNN keeps its output, in the input's dtype).
    const Tensor& activations = saved[inputs + activations_at(cell)];
    const at::ScalarType dtype = activations.scalar_type();
    const auto in_dtype = [&](const Tensor& t) {
      return t.scalar_type() == dtype ? t : t.to(dtype);
    };
    // [B, W] from a layer's [1, B, W] or an unbatched [W]: views whose backward is a view.
    const auto rows = [&](const Tensor& t) {
      return in_dtype(t.dim() == 3 ? t.squeeze(0) : t.dim() == 1 ? t.unsqueeze(0) : t);
    };
    const auto result_grad = [&](size_t k) {
      return k < grads.size() && grads[k].defined() ? rows(grads[k]) : Tensor();
    };
    // The gradients of h (a layer's output is h too), of c, and of the activations (in the
    // backward of a create_graph backward), each undefined where none came.
    const Tensor d_h = layer ? sum_of(result_grad(0), result_grad(1)) : result_grad(0);
    const Tensor d_c = cell == Cell::kLstm ? result_grad(layer ? 2 : 1) : Tensor();
    const Tensor d_a = result_grad(grads.size() - 1);
    const Tensor x = rows(saved[0]), h0 = rows(saved[1]);
    const Tensor a = rows(activations);
    const auto or_zeros = [&](const Tensor& t) { return t.defined() ? t : at::zeros_like(h0); };
    const auto parts = [&](const Tensor& t) {
      return t.defined() ? t.chunk(4, 1) : std::vector<Tensor>(4);
    };
    // The gradients of x W_ih^T + b_ih and h0 W_hh^T + b_hh; and what reaches the states
    // besides: h0's through the GRU's z h0, c0's through the LSTM's f c0.
    Tensor to_input, to_hidden, d_h0_direct, d_c0;
    switch (cell) {
      case Cell::kLstm: {  // c = f c0 + i g, h = o tanh(c)
        const auto gate = a.chunk(4, 1);  // i, f, g, o
        const auto d_gate = parts(d_a);
        const Tensor c0 = rows(saved[2]), tanh_c = (gate[1] * c0 + gate[0] * gate[2]).tanh();
        const Tensor d_cell = or_zeros(
            d_h.defined() ? sum_of(d_c, at::tanh_backward(d_h * gate[3], tanh_c)) : d_c);
        const Tensor d_o = d_h.defined() ? d_h * tanh_c : Tensor();
        to_input = to_hidden =
            at::cat({at::sigmoid_backward(sum_of(d_cell * gate[2], d_gate[0]), gate[0]),
                     at::sigmoid_backward(sum_of(d_cell * c0, d_gate[1]), gate[1]),
                     at::tanh_backward(sum_of(d_cell * gate[0], d_gate[2]), gate[2]),
                     at::sigmoid_backward(or_zeros(sum_of(d_o, d_gate[3])), gate[3])},
                    1);
        if (needed[2]) d_c0 = d_cell * gate[1];
        break;
      }
      case Cell::kGru: {  // n = tanh(x W_in^T + b_in + r hn), h = n + z (h0 - n)
        const auto gate = a.chunk(4, 1);  // r, z, n, hn = h0 W_hn^T + b_hn
        const auto d_gate = parts(d_a);
        const Tensor d_new = or_zeros(d_h);
        const Tensor to_n =
            at::tanh_backward(sum_of(d_new * (1 - gate[1]), d_gate[2]), gate[2]);
        const Tensor to_r = at::sigmoid_backward(sum_of(to_n * gate[3], d_gate[0]), gate[0]);
        const Tensor to_z =
            at::sigmoid_backward(sum_of(d_new * (h0 - gate[2]), d_gate[1]), gate[1]);
        to_input = at::cat({to_r, to_z, to_n}, 1);
        to_hidden = at::cat({to_r, to_z, sum_of(to_n * gate[0], d_gate[3])}, 1);
        if (needed[1]) d_h0_direct = d_new * gate[1];
        break;
      }
      case Cell::kRnnTanh:
        to_input = to_hidden = at::tanh_backward(or_zeros(sum_of(d_h, d_a)), a);
        break;
      default: to_input = to_hidden = at::threshold_backward(or_zeros(sum_of(d_h, d_a)), a, 0);
    }
    std::vector<Tensor> step{x, h0};
    for (size_t i = 1 + count; i < inputs; ++i) step.push_back(in_dtype(saved[i]));
    std::vector<bool> step_needed{needed[0], needed[1]};
    step_needed.insert(step_needed.end(), needed.begin() + 1 + count, needed.end());
    step_needed.resize(6, false);
    const std::vector<Tensor> got = through_products(to_input, to_hidden, step, step_needed);
    Variables result(inputs);
    const auto shaped = [&](const Tensor& t, size_t i) {
      const Tensor reshaped = t.reshape(saved[i].sizes());
      return t.scalar_type() == saved[i].scalar_type() ? reshaped
                                                       : reshaped.to(saved[i].scalar_type());
    };
    if (needed[0]) result[0] = shaped(got[0], 0);
    if (needed[1]) result[1] = shaped(sum_of(got[1], d_h0_direct), 1);
    if (cell == Cell::kLstm && needed[2]) result[2] = shaped(d_c0, 2);
    for (size_t i = 1 + count; i < inputs; ++i)
      if (needed[i]) result[i] = shaped(got[i - count + 1], i);
    return result;
  }
};

// Both directions of a layer's call where a gradient may follow, as one autograd node around
// the pair ops (direct_layer_pair_node). Its tensors, in order: x [T, B, I], then each
// direction's h (and c), w_ih, w_hh (and b_ih, b_hh where has_bias). -> each direction's output
// [T, B, H] and new h (and c). Its backward is the pair backward op; where grad mode is on in
// the backward, or gradients come batched, and after such a backward, the Python pair
// Function's (backward_in_python).
struct LayerPairNode : torch::autograd::Function<LayerPairNode> {
  using Context = torch::autograd::AutogradContext;
  using Variables = torch::autograd::variable_list;

  static Variables forward(Context* ctx, int64_t cell_index, bool has_bias,
                           at::TensorList tensors, const LayerLayout& layout) {
    const Cell cell = static_cast<Cell>(cell_index);
    const size_t count = state_count(cell),
                 each = count + (has_bias ? 4 : 2) + (layout.projection ? 1 : 0);
    std::vector<Tensor> states[2];
    std::vector<OptionalTensor> w[2];
    for (size_t d = 0; d < 2; ++d) {
      const Tensor* first = &tensors[1 + d * each];
      states[d].assign(first, first + count);
      w[d] = layer_weights(first + count, has_bias, layout.projection);
    }
    std::vector<Tensor> kept[2];
    const auto results = both_directions(cell, tensors[0], states, w, &kept,
                                         layout.batch_sizes);
    // Saved: the inputs, then per direction a copy of its output (the caller may edit the
    // output in place) and what its backward reads besides.
    std::vector<Tensor> saved(tensors.begin(), tensors.end());
    Variables outputs;
    for (size_t d = 0; d < 2; ++d) {
      const auto& [output, finals] = results[d];
      outputs.push_back(output);
      outputs.insert(outputs.end(), finals.begin(), finals.end());
      saved.push_back(output.clone());
      saved.insert(saved.end(), kept[d].begin(), kept[d].end());
    }
    ctx->save_for_backward(saved);
    ctx->saved_data["cell"] = cell_index;
    ctx->saved_data["inputs"] = static_cast<int64_t>(tensors.size());
    save_layout(ctx, layout);
    ctx->set_materialize_grads(false);  // a state's gradient that does not come costs nothing
    return outputs;
  }

  // grads: those of each direction's output and final states, undefined where none flows.
  // -> one per forward argument.
  static Variables backward(Context* ctx, Variables grads) {
    const Cell cell = static_cast<Cell>(ctx->saved_data["cell"].toInt());
    const Variables saved = ctx->get_saved_variables();
    const size_t inputs = ctx->saved_data["inputs"].toInt();
    const std::vector<bool> needed = inputs_needing_grad(ctx, inputs);
    Variables input_grads;
    if (ctx->saved_data.count(kInPython) || beyond_fused_ops(grads))
      input_grads = backward_in_python(ctx, cell, true, saved, grads, needed);
    else if (!any_defined(grads))
      input_grads = Variables(inputs);
    else
      input_grads = fused(cell, saved, grads, needed, saved_layout(ctx));
    Variables result(2);  // none for cell_index and has_bias
    result.insert(result.end(), input_grads.begin(), input_grads.end());
    result.emplace_back();  // nor for layout
    return result;
  }

 private:
  // The pair backward op's gradients, one per input (undefined where not needed): x's the sum
  // of both directions'.
  static Variables fused(Cell cell, const Variables& saved, const Variables& grads,
                         const std::vector<bool>& needed, const LayerLayout& layout) {
    const auto& [batch_sizes, projection] = layout;
    const size_t inputs = needed.size(), count = state_count(cell), each = (inputs - 1) / 2;
    const bool has_bias = each - projection == count + 4;
    const size_t kept_each = 1 + activations_kept(cell, projection);  // output, activations
    const Tensor& x = saved[0];
    // Input i of direction d, and what its forward kept (k: its output, then activations).
    const auto input = [&](size_t i) {
      return std::vector<Tensor>{saved[1 + i], saved[1 + each + i]};
    };
    const auto kept = [&](size_t k) {
      return std::vector<Tensor>{saved[inputs + k], saved[inputs + kept_each + k]};
    };
    // The gradients of result k (the output, then the states) of both directions.
    const auto result_grads = [&](size_t k) {
      const auto of = [&](size_t d) {
        const Tensor& g = grads[d * (1 + count) + k];
        return g.defined() ? OptionalTensor(g) : std::nullopt;
      };
      return OptionalTensors({of(0), of(1)});
    };
    bool weight_grads = false;
    for (size_t d = 0; d < 2; ++d)
      for (size_t i = count; i < each; ++i) weight_grads = weight_grads || needed[1 + d * each + i];
    const bool h0_grad = needed[1] || needed[1 + each];
    const OptionalTensors none({std::nullopt, std::nullopt});
    const auto optional = [&](const std::vector<Tensor>& both) {
      return projection ? OptionalTensors({both[0], both[1]}) : none;
    };
    std::vector<Tensor> flat;  // each direction's gradients, as the op gives them
    size_t per_direction;
    switch (cell) {
      case Cell::kLstm:  // x, h0, c0, w_ih, w_hh, the biases (one tensor), w_hr
        flat = lstm_backward_pair(result_grads(0), result_grads(1), result_grads(2), x,
                                  input(0), input(1), input(2), input(3), kept(0), kept(1),
                                  kept(2), has_bias, batch_sizes, optional(input(each - 1)),
                                  optional(kept(kept_each - 1)), weight_grads, h0_grad);
        per_direction = 7;
        break;
      case Cell::kGru:  // x, h0, w_ih, w_hh, b_ih, b_hh
        flat = gru_backward_pair(result_grads(0), result_grads(1), x, input(0), input(1),
                                 input(2), kept(0), kept(1), has_bias, batch_sizes,
                                 weight_grads, h0_grad);
        per_direction = 6;
        break;
      default:  // x, h0, w_ih, w_hh, the biases (one tensor)
        flat = rnn_backward_pair(result_grads(0), result_grads(1), x, input(0), input(1),
                                 input(2), kept(0), has_bias, cell == Cell::kRnnRelu,
                                 batch_sizes, weight_grads, h0_grad);
        per_direction = 5;
    }
    Variables result(inputs);
    if (needed[0]) result[0] = sum_of(flat[0], flat[per_direction]);
    for (size_t d = 0; d < 2; ++d) {
      const auto got = flat.begin() + d * per_direction;  // x's first
      for (size_t i = 0; i < each; ++i) {
        if (!needed[1 + d * each + i]) continue;
        // The states' and weights' in the op's order; both biases take its one bias gradient
        // where it gives one (the LSTM's, the RNN's); the LSTM's w_hr's follows it.
        const size_t bias = count + 2;
        const bool shared_bias = cell != Cell::kGru && has_bias && i == bias + 1;
        const bool w_hr = projection && i == each - 1;
        result[1 + d * each + i] = got[1 + (w_hr ? bias + 1 : shared_bias ? bias : i)];
      }
    }
    return result;
  }
};

namespace {

// The checks a layer node's arguments must pass: input [T, B, I] with T > 0 (a PackedSequence's
// data [rows, I] with its batch_sizes), and for each of `directions` its states [B, H] and 2 or
// 4 weights (the LSTM's 3 or 5, w_hr last). -> the layer's layout.
LayerLayout check_layer_arguments(Cell cell, const Tensor& input, const std::vector<Tensor>& hx,
                                  const std::vector<Tensor>& weights, size_t directions,
                                  const OptionalTensor& batch_sizes) {
  TORCH_CHECK(batch_sizes ? input.dim() == 2 && batch_sizes->dim() == 1
                          : input.dim() == 3 && input.size(0) > 0,
              "fusedrnn: a layer takes input [T, B, I] with T > 0, or a PackedSequence's data "
              "[rows, I] with its batch_sizes");
  const size_t each = weights.size() / directions;
  const bool projection = cell == Cell::kLstm && each % 2 == 1;
  TORCH_CHECK(weights.size() % directions == 0 &&
                  (each - projection == 2 || each - projection == 4),
              "fusedrnn: expected 2 or 4 weights a direction (the LSTM's 3 or 5 with w_hr)");
  TORCH_CHECK(hx.size() == state_count(cell) * directions, "fusedrnn: expected ",
              state_count(cell), " states a direction");
  for (const Tensor& state : hx)
    TORCH_CHECK(state.dim() == 2, "fusedrnn: a layer's state must be [B, H]");
  return {batch_sizes, projection};
}

// Keeps the address of result's node in its own context, for a backward that hands the node
// to Python (backward_in_python): torch's C++ Function API gives its backward no handle to it.
template <typename Node>
void keep_node_address(const Tensor& result) {
  if (auto* node = dynamic_cast<torch::autograd::CppNode<Node>*>(result.grad_fn().get()))
    node->ctx_.saved_data["node"] = reinterpret_cast<int64_t>(node);
}

// The step's node over x, its states and weights (RecurrenceNode's tensors); a layer's as
// `layout` lays them out.
std::vector<Tensor> step_node(Cell cell, bool layer, const Tensor& input,
                              const std::vector<Tensor>& states,
                              const std::vector<Tensor>& weights,
                              const LayerLayout& layout = {}) {
  std::vector<Tensor> tensors{input};
  tensors.insert(tensors.end(), states.begin(), states.end());
  tensors.insert(tensors.end(), weights.begin(), weights.end());
  std::vector<Tensor> results = RecurrenceNode::apply(
      static_cast<int64_t>(cell), weights.size() - layout.projection == 4, layer,
      at::TensorList(tensors), layout);
  if (over_a_sequence(layer, layout, input)) keep_node_address<RecurrenceNode>(results.back());
  results.pop_back();  // the activations, for the node's own create_graph backward
  return results;
}

// Both directions' node (LayerPairNode) over x: states and weights of each direction as
// direct_layer_pair_node takes them, the forward direction's first. -> each direction's
// output, then its new states.
std::vector<Tensor> pair_node(Cell cell, const Tensor& input,
                              const std::vector<Tensor> (&states)[2],
                              const std::vector<Tensor> (&weights)[2],
                              const LayerLayout& layout) {
  std::vector<Tensor> tensors{input};
  for (size_t d = 0; d < 2; ++d) {
    tensors.insert(tensors.end(), states[d].begin(), states[d].end());
    tensors.insert(tensors.end(), weights[d].begin(), weights[d].end());
  }
  std::vector<Tensor> results =
      LayerPairNode::apply(static_cast<int64_t>(cell), weights[0].size() - layout.projection == 4,
                           at::TensorList(tensors), layout);
  keep_node_address<LayerPairNode>(results[0]);
  return results;
}

// Whether a layer's call must be its autograd node: grad mode is on and one of its tensors
// requires a gradient (else it runs as a call without one, as ops.py's layers do).
bool needs_node(const Tensor& x, const std::vector<Tensor>& states,
                const std::vector<Tensor>& weights) {
  const auto requires_grad = [](const Tensor& t) { return t.requires_grad(); };
  return c10::GradMode::is_enabled() &&
         (x.requires_grad() || std::any_of(states.begin(), states.end(), requires_grad) ||
          std::any_of(weights.begin(), weights.end(), requires_grad));
}

// A module's layers and directions over x [T, B, I] (or a PackedSequence's rows [rows, I], with
// batch_sizes). given: the module's states, [L*D, B, W] each, or none (zeros); weights as
// direct_module_forward's. With `gradient` a gradient may follow: a layer whose tensors require
// one runs as its node (step_node, pair_node), and the ops between layers are autograd's.
// -> the last layer's output, and per state every unit's final one [B, W].
std::pair<Tensor, std::vector<std::vector<Tensor>>> through_layers(
    Cell cell, Tensor x, int64_t batch, const std::vector<Tensor>& given,
    const std::vector<Tensor>& weights, int64_t layers, bool bidirectional, bool bias,
    bool projection, double dropout, bool gradient, const OptionalTensor& batch_sizes = {}) {
  const size_t count = state_count(cell);
  const int64_t directions = bidirectional ? 2 : 1, units = layers * directions;
  const size_t per_unit = 2 + (bias ? 2 : 0) + (projection ? 1 : 0);
  TORCH_CHECK(layers >= 1 && weights.size() == per_unit * units,
              "fusedrnn: expected ", per_unit * units, " weights, got ", weights.size());
  TORCH_CHECK(given.empty() || given.size() == count, "fusedrnn: expected ", count, " states");
  for (const Tensor& state : given)
    TORCH_CHECK(state.dim() == 3 && state.size(0) == units && state.size(1) == batch,
                "fusedrnn: a state must be [layers * directions, batch, hidden]");
  // Per unit: its weights (as the module lists them), and its initial states: a state's unit
  // as a view that autograd tracks where a gradient may follow.
  const auto unit_weights = [&](int64_t unit) {
    return std::vector<Tensor>(&weights[unit * per_unit], &weights[(unit + 1) * per_unit]);
  };
  const std::vector<Tensor> zeros =  // for every unit, without hx
      given.empty() ? zero_states(cell, batch, weights[1], x.options()) : std::vector<Tensor>{};
  const auto unit_states = [&](int64_t unit) {
    if (given.empty()) return zeros;
    std::vector<Tensor> states;
    for (const Tensor& state : given)
      states.push_back(gradient ? state.select(0, unit) : unit_of(state, unit));
    return states;
  };
  const LayerLayout layout{batch_sizes, projection};
  std::vector<std::vector<Tensor>> finals(count);  // per state, every unit's
  for (int64_t layer = 0; layer < layers; ++layer) {
    std::vector<std::pair<Tensor, std::vector<Tensor>>> results;
    if (directions == 2) {
      const std::vector<Tensor> states[2] = {unit_states(2 * layer), unit_states(2 * layer + 1)};
      const std::vector<Tensor> w[2] = {unit_weights(2 * layer), unit_weights(2 * layer + 1)};
      if (gradient && (needs_node(x, states[0], w[0]) || needs_node(x, states[1], w[1]))) {
        const std::vector<Tensor> flat = pair_node(cell, x, states, w, layout);
        for (size_t d = 0; d < 2; ++d) {
          const auto first = flat.begin() + d * (1 + count);
          results.emplace_back(first[0], std::vector<Tensor>(first + 1, first + 1 + count));
        }
      } else {
        const std::vector<OptionalTensor> optional[2] = {
            layer_weights(w[0].data(), bias, projection),
            layer_weights(w[1].data(), bias, projection)};
        results = both_directions(cell, x, states, optional, nullptr, batch_sizes);
      }
      x = at::cat({results[0].first, results[1].first}, -1);
    } else {
      const std::vector<Tensor> states = unit_states(layer), w = unit_weights(layer);
      if (gradient && needs_node(x, states, w)) {
        std::vector<Tensor> got = step_node(cell, true, x, states, w, layout);
        results.emplace_back(got[0], std::vector<Tensor>(got.begin() + 1, got.end()));
      } else {
        results.push_back(one_direction(cell, x, states, layer_weights(w.data(), bias, projection),
                                        false, nullptr, batch_sizes));
      }
      x = results[0].first;
    }
    for (const auto& result : results)
      for (size_t k = 0; k < count; ++k) finals[k].push_back(result.second[k]);
    if (dropout > 0 && layer < layers - 1) x = at::dropout(x, dropout, true);
  }
  return {x, finals};
}

// Whether a module's call (its input, states and flat weights) may follow a gradient: true
// where one may (through_layers' `gradient`: grad mode on and a tensor that requires one, as
// needs_node asks of a layer), false where it needs none, nullopt where the call must go
// through the dispatcher (may_skip_dispatcher).
std::optional<bool> gradient_may_follow(const Tensor& input, const std::vector<Tensor>& hx,
                                        const std::vector<Tensor>& weights) {
  if (!may_skip_dispatcher(input, hx, weights, true)) return std::nullopt;
  return needs_node(input, hx, weights);
}

}  // namespace

std::optional<std::tuple<Tensor, std::vector<Tensor>>> direct_module_forward(
    const std::string& cell_name, const Tensor& input, const std::vector<Tensor>& hx,
    const std::vector<Tensor>& weights, int64_t layers, bool bidirectional, bool bias,
    bool projection, bool batch_first, double dropout) {
  const std::optional<bool> gradient = gradient_may_follow(input, hx, weights);
  if (!gradient) return std::nullopt;
  const Cell cell = cell_named(cell_name);
  const bool batched = input.dim() == 3;  // else [T, I], unbatched
  TORCH_CHECK(batched || input.dim() == 2, "fusedrnn: the input must be 2-D or 3-D");
  // An unbatched tensor as a batch of one: a view that autograd tracks where it must.
  const auto batch_of_one = [&](const Tensor& t) {
    return *gradient ? t.unsqueeze(-2) : with_batch_of_one(t);
  };
  std::vector<Tensor> given;  // [L*D, B, W]
  for (const Tensor& state : hx) {
    TORCH_CHECK(state.dim() == input.dim(),
                "fusedrnn: a state must be [layers * directions, (batch,) hidden]");
    given.push_back(batched ? state : batch_of_one(state));
  }
  // [T, B, I]; unbatched input is one sequence whatever batch_first says, as in torch.nn.
  const Tensor x0 = !batched ? batch_of_one(input) : batch_first ? input.transpose(0, 1) : input;
  TORCH_CHECK(x0.size(0) > 0, "fusedrnn: the sequence must have at least one step");
  auto [x, finals] = through_layers(cell, x0, x0.size(1), given, weights, layers, bidirectional,
                                    bias, projection, dropout, *gradient);
  const int64_t units = layers * (bidirectional ? 2 : 1);
  // Results under other sizes: reshaped in place where no autograd history holds their sizes.
  const auto resized = [&](Tensor result, at::IntArrayRef sizes) {
    return *gradient ? result.view(sizes) : reshaped(std::move(result), sizes);
  };
  std::vector<Tensor> stacked;  // as modules.py's _run_layers gives them
  for (auto& final : finals) {
    if (!batched)  // [1, W] each
      stacked.push_back(units == 1 ? std::move(final[0]) : at::cat(final));
    else if (units == 1) {
      const int64_t batch = final[0].size(0), width = final[0].size(1);
      stacked.push_back(resized(std::move(final[0]), {1, batch, width}));
    }
    else
      stacked.push_back(at::stack(final));
  }
  if (!batched) {
    const int64_t steps = x.size(0), width = x.size(-1);
    return std::tuple{resized(std::move(x), {steps, width}), stacked};
  }
  return std::tuple{batch_first ? x.transpose(0, 1) : x, stacked};
}

std::optional<std::tuple<Tensor, std::vector<Tensor>>> direct_packed_forward(
    const std::string& cell_name, const Tensor& data, const Tensor& batch_sizes,
    const OptionalTensor& sorted_indices, const OptionalTensor& unsorted_indices,
    const std::vector<Tensor>& hx, const std::vector<Tensor>& weights, int64_t layers,
    bool bidirectional, bool bias, bool projection, double dropout) {
  const std::optional<bool> gradient = gradient_may_follow(data, hx, weights);
  if (!gradient) return std::nullopt;
  const Cell cell = cell_named(cell_name);
  TORCH_CHECK(data.dim() == 2 && batch_sizes.dim() == 1 && batch_sizes.numel() > 0 &&
                  batch_sizes.scalar_type() == at::kLong && batch_sizes.is_cpu(),
              "fusedrnn: packed input is data [rows, I] with batch_sizes, int64 on the CPU");
  const int64_t batch = sorted_indices ? sorted_indices->numel()
                                       : batch_sizes.contiguous().data_ptr<int64_t>()[0];
  std::vector<Tensor> given;  // into the sorted order, as the rows are
  for (const Tensor& state : hx) {
    TORCH_CHECK(state.dim() == 3 && state.size(1) == batch,
                "fusedrnn: a state must be [layers * directions, batch, hidden]");
    given.push_back(sorted_indices ? state.index_select(1, *sorted_indices) : state);
  }
  auto [output, finals] = through_layers(cell, data, batch, given, weights, layers,
                                         bidirectional, bias, projection, dropout, *gradient,
                                         batch_sizes);
  std::vector<Tensor> stacked;  // [L*D, B, W] each, back in the caller's order
  for (auto& final : finals) {
    Tensor state = at::stack(final);
    stacked.push_back(unsorted_indices ? state.index_select(1, *unsorted_indices) : state);
  }
  return std::tuple{output, stacked};
}

std::optional<std::vector<Tensor>> direct_cell_forward(const std::string& cell_name,
                                                       const Tensor& input,
                                                       const std::vector<Tensor>& hx,
                                                       const std::vector<Tensor>& weights) {
  if (!may_skip_dispatcher(input, hx, weights)) return std::nullopt;
  const Cell cell = cell_named(cell_name);
  const size_t count = state_count(cell);
  const bool batched = input.dim() == 2;  // else [I], unbatched
  TORCH_CHECK(batched || input.dim() == 1, "fusedrnn: a cell's input must be 1-D or 2-D");
  TORCH_CHECK(weights.size() == 2 || weights.size() == 4, "fusedrnn: expected 2 or 4 weights");
  TORCH_CHECK(hx.empty() || hx.size() == count, "fusedrnn: expected ", count, " states");
  const Tensor rows = batched ? input : with_batch_of_one(input);  // [B, I]
  std::vector<Tensor> states;  // [B, H] each
  for (const Tensor& state : hx) {
    TORCH_CHECK(state.dim() == input.dim(), "fusedrnn: a cell's state must be as its input");
    states.push_back(batched ? state : with_batch_of_one(state));
  }
  if (states.empty()) states = zero_states(cell, rows.size(0), weights[1], input.options());
  const std::vector<OptionalTensor> w = layer_weights(weights.data(), weights.size() == 4, false);
  std::vector<Tensor> results = one_direction(cell, one_step(rows), states, w, false).second;
  if (!batched)
    for (Tensor& result : results) {
      const int64_t width = result.size(1);
      result = reshaped(std::move(result), {width});
    }
  return results;
}

std::optional<std::vector<Tensor>> direct_cell_step(const std::string& cell_name,
                                                    const Tensor& input,
                                                    const std::vector<Tensor>& hx,
                                                    const std::vector<Tensor>& weights) {
  if (!may_skip_dispatcher(input, hx, weights, true)) return std::nullopt;
  const Cell cell = cell_named(cell_name);
  const size_t count = state_count(cell);
  const bool batched = input.dim() == 2;  // else [I], unbatched
  TORCH_CHECK(batched || input.dim() == 1, "fusedrnn: a cell's input must be 1-D or 2-D");
  TORCH_CHECK(weights.size() == 2 || weights.size() == 4, "fusedrnn: expected 2 or 4 weights");
  TORCH_CHECK(hx.empty() || hx.size() == count, "fusedrnn: expected ", count, " states");
  for (const Tensor& state : hx)
    TORCH_CHECK(state.dim() == input.dim(), "fusedrnn: a cell's state must be as its input");
  if (!hx.empty()) return step_node(cell, false, input, hx, weights);
  std::vector<Tensor> zeros =  // shaped as the input's rows (the node returns neither)
      zero_states(cell, batched ? input.size(0) : 1, weights[1], input.options());
  if (!batched)
    for (Tensor& zero : zeros) zero = zero.view({zero.size(1)});
  return step_node(cell, false, input, zeros, weights);
}

std::optional<std::vector<Tensor>> direct_layer_node(const std::string& cell_name,
                                                     const Tensor& input,
                                                     const std::vector<Tensor>& hx,
                                                     const std::vector<Tensor>& weights,
                                                     const OptionalTensor& batch_sizes) {
  if (!may_skip_dispatcher(input, hx, weights, true)) return std::nullopt;
  const Cell cell = cell_named(cell_name);
  const LayerLayout layout = check_layer_arguments(cell, input, hx, weights, 1, batch_sizes);
  return step_node(cell, true, input, hx, weights, layout);
}

std::optional<std::vector<Tensor>> direct_layer_pair_node(const std::string& cell_name,
                                                          const Tensor& input,
                                                          const std::vector<Tensor>& hx,
                                                          const std::vector<Tensor>& weights,
                                                          const OptionalTensor& batch_sizes) {
  if (!may_skip_dispatcher(input, hx, weights, true)) return std::nullopt;
  const Cell cell = cell_named(cell_name);
  const size_t count = state_count(cell);
  const LayerLayout layout = check_layer_arguments(cell, input, hx, weights, 2, batch_sizes);
  const size_t each = weights.size() / 2;
  const std::vector<Tensor> states[2] = {{hx.begin(), hx.begin() + count},
                                         {hx.begin() + count, hx.end()}};
  const std::vector<Tensor> w[2] = {{weights.begin(), weights.begin() + each},
                                    {weights.begin() + each, weights.end()}};
  return pair_node(cell, input, states, w, layout);
}

void set_python_layer_backward(PythonLayerBackward backward) {
  python_layer_backward() = std::move(backward);
}

}  // namespace fusedrnn
