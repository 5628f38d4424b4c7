// The direct calls without a gradient (direct.h): the layer loop of modules.py's
// _run_layers, in C++, on the layer functions of layer.h.
#include "direct.h"

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>

#include "layer.h"
#include "sequence.h"

namespace fusedrnn {

namespace {

enum class Cell { kLstm, kGru, kRnnTanh, kRnnRelu };

Cell cell_named(const std::string& name) {
  if (name == "LSTM") return Cell::kLstm;
  if (name == "GRU") return Cell::kGru;
  if (name == "RNN_TANH") return Cell::kRnnTanh;
  TORCH_CHECK(name == "RNN_RELU", "fusedrnn: unknown cell '", name, "'");
  return Cell::kRnnRelu;
}

size_t state_count(Cell cell) { return cell == Cell::kLstm ? 2 : 1; }  // h, and c

// Whether the call may skip the dispatcher (direct.h): nothing watches or transforms ops, no
// gradient can follow, and every tensor is a plain strided CPU tensor (no subclass with a
// dispatch key of its own, no lazy negation, no functorch wrapper).
bool may_skip_dispatcher(const Tensor& input, const std::vector<Tensor>& hx,
                         const std::vector<Tensor>& weights) {
  using c10::DispatchKey;
  // What eager calls always hold: a dispatch mode, a functorch level or the Python dispatcher
  // adds to the included keys; autocast removes its key from the excluded ones.
  static const c10::DispatchKeySet quiet{DispatchKey::BackendSelect,
                                         DispatchKey::ADInplaceOrView};
  static const c10::DispatchKeySet plain{DispatchKey::CPU, DispatchKey::AutogradCPU,
                                         DispatchKey::ADInplaceOrView, DispatchKey::AutocastCPU};
  const auto thread = c10::impl::tls_local_dispatch_key_set();
  if ((thread.included_ | quiet) != quiet || !thread.excluded_.has(DispatchKey::AutocastCPU) ||
      at::hasCallbacks())
    return false;
  const bool grad_mode = c10::GradMode::is_enabled();
  const auto plain_tensor = [&](const Tensor& t) {
    return t.is_cpu() && t.layout() == at::kStrided && (t.key_set() | plain) == plain &&
           !(grad_mode && t.requires_grad());
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
// without bias), w_hr (undefined without a projection). -> output, new states.
std::pair<Tensor, std::vector<Tensor>> one_direction(Cell cell, const Tensor& x,
                                                     const std::vector<Tensor>& states,
                                                     const std::vector<OptionalTensor>& w,
                                                     bool reverse) {
  switch (cell) {
    case Cell::kLstm: {
      auto [output, hn, cn, gates, cells, unprojected] = lstm_forward(
          x, states[0], states[1], *w[0], *w[1], w[2], w[3], reverse, false, std::nullopt, w[4]);
      return {output, {hn, cn}};
    }
    case Cell::kGru: {
      auto [output, hn, saved] =
          gru_forward(x, states[0], *w[0], *w[1], w[2], w[3], reverse, false, std::nullopt);
      return {output, {hn}};
    }
    default: {
      auto [output, hn] = rnn_forward(x, states[0], *w[0], *w[1], w[2], w[3],
                                      cell == Cell::kRnnRelu, reverse, std::nullopt);
      return {output, {hn}};
    }
  }
}

// Both directions of a layer in one call (the *_pair ops, side by side on two threads).
// -> each direction's output and new states.
std::vector<std::pair<Tensor, std::vector<Tensor>>> both_directions(
    Cell cell, const Tensor& x, const std::vector<Tensor> (&states)[2],
    const std::vector<OptionalTensor> (&w)[2]) {
  const auto list = [&](size_t k) { return std::vector<Tensor>{states[0][k], states[1][k]}; };
  const auto weight = [&](size_t k) { return std::vector<Tensor>{*w[0][k], *w[1][k]}; };
  const auto optional = [&](size_t k) { return OptionalTensors({w[0][k], w[1][k]}); };
  std::vector<Tensor> flat;
  size_t per_direction;  // results of each direction in the flat list
  switch (cell) {
    case Cell::kLstm:
      flat = lstm_forward_pair(x, list(0), list(1), weight(0), weight(1), optional(2),
                               optional(3), false, std::nullopt, optional(4));
      per_direction = 6;
      break;
    case Cell::kGru:
      flat = gru_forward_pair(x, list(0), weight(0), weight(1), optional(2), optional(3), false,
                              std::nullopt);
      per_direction = 3;
      break;
    default:
      flat = rnn_forward_pair(x, list(0), weight(0), weight(1), optional(2), optional(3),
                              cell == Cell::kRnnRelu, std::nullopt);
      per_direction = 2;
  }
  const size_t count = state_count(cell);
  std::vector<std::pair<Tensor, std::vector<Tensor>>> results(2);
  for (size_t d = 0; d < 2; ++d) {
    const auto first = flat.begin() + d * per_direction;
    results[d] = {first[0], std::vector<Tensor>(first + 1, first + 1 + count)};
  }
  return results;
}

}  // namespace

std::optional<std::tuple<Tensor, std::vector<Tensor>>> direct_module_forward(
    const std::string& cell_name, const Tensor& input, const std::vector<Tensor>& hx,
    const std::vector<Tensor>& weights, int64_t layers, bool bidirectional, bool bias,
    bool projection, bool batch_first, double dropout) {
  if (!may_skip_dispatcher(input, hx, weights)) return std::nullopt;
  const Cell cell = cell_named(cell_name);
  const size_t count = state_count(cell);
  const int64_t directions = bidirectional ? 2 : 1, units = layers * directions;
  const size_t per_unit = 2 + (bias ? 2 : 0) + (projection ? 1 : 0);
  const bool batched = input.dim() == 3;  // else [T, I], unbatched
  TORCH_CHECK(batched || input.dim() == 2, "fusedrnn: the input must be 2-D or 3-D");
  TORCH_CHECK(layers >= 1 && weights.size() == per_unit * units,
              "fusedrnn: expected ", per_unit * units, " weights, got ", weights.size());
  TORCH_CHECK(hx.empty() || hx.size() == count, "fusedrnn: expected ", count, " states");
  std::vector<Tensor> given;  // [L*D, B, W] each
  for (const Tensor& state : hx) {
    TORCH_CHECK(state.dim() == input.dim() && state.size(0) == units,
                "fusedrnn: a state must be [layers * directions, (batch,) hidden]");
    given.push_back(batched ? state : with_batch_of_one(state));
  }
  // [T, B, I]; unbatched input is one sequence whatever batch_first says, as in torch.nn.
  const Tensor x0 = !batched ? with_batch_of_one(input) : batch_first ? input.transpose(0, 1)
                                                                      : input;
  TORCH_CHECK(x0.size(0) > 0, "fusedrnn: the sequence must have at least one step");

  // Per unit: its weights in one_direction's order, and its initial states.
  const auto unit_weights = [&](int64_t unit) {
    return layer_weights(&weights[unit * per_unit], bias, projection);
  };
  const std::vector<Tensor> zeros =  // for every unit, without hx
      hx.empty() ? zero_states(cell, x0.size(1), weights[1], x0.options()) : std::vector<Tensor>{};
  const auto unit_states = [&](int64_t unit) {
    if (hx.empty()) return zeros;
    std::vector<Tensor> states;
    for (const Tensor& state : given) states.push_back(unit_of(state, unit));
    return states;
  };

  Tensor x = x0;
  std::vector<std::vector<Tensor>> finals(count);  // per state, every unit's
  for (int64_t layer = 0; layer < layers; ++layer) {
    std::vector<std::pair<Tensor, std::vector<Tensor>>> results;
    if (directions == 2) {
      const std::vector<Tensor> states[2] = {unit_states(2 * layer), unit_states(2 * layer + 1)};
      const std::vector<OptionalTensor> w[2] = {unit_weights(2 * layer),
                                               unit_weights(2 * layer + 1)};
      results = both_directions(cell, x, states, w);
      x = at::cat({results[0].first, results[1].first}, -1);
    } else {
      results.push_back(one_direction(cell, x, unit_states(layer), unit_weights(layer), false));
      x = results[0].first;
    }
    for (const auto& result : results)
      for (size_t k = 0; k < count; ++k) finals[k].push_back(result.second[k]);
    if (dropout > 0 && layer < layers - 1) x = at::dropout(x, dropout, true);
  }
  std::vector<Tensor> stacked;  // as modules.py's _run_layers gives them
  for (auto& final : finals) {
    if (!batched)  // [1, W] each
      stacked.push_back(units == 1 ? std::move(final[0]) : at::cat(final));
    else if (units == 1) {
      const int64_t batch = final[0].size(0), width = final[0].size(1);
      stacked.push_back(reshaped(std::move(final[0]), {1, batch, width}));
    }
    else
      stacked.push_back(at::stack(final));
  }
  if (!batched) {
    const int64_t steps = x.size(0), width = x.size(-1);
    return std::tuple{reshaped(std::move(x), {steps, width}), stacked};
  }
  return std::tuple{batch_first ? x.transpose(0, 1) : x, stacked};
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
  const Tensor step = read_only_alias(  // [1, B, I]
      rows, {1, rows.size(0), rows.size(1)},
      {rows.size(0) * rows.stride(0), rows.stride(0), rows.stride(1)}, rows.storage_offset());
  std::vector<Tensor> results = one_direction(cell, step, states, w, false).second;
  if (!batched)
    for (Tensor& result : results) {
      const int64_t width = result.size(1);
      result = reshaped(std::move(result), {width});
    }
  return results;
}

}  // namespace fusedrnn
