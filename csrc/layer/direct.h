// The modules' and cells' calls from Python straight to the layer functions (layer.h), without
// the dispatcher: a module's whole call, every layer, in one call (direct_module_forward,
// direct_packed_forward), a cell's step without a gradient (direct_cell_forward); and where a
// gradient may follow, a cell's step or a layer's call as a single autograd node in C++
// (direct_cell_step, direct_layer_node, direct_layer_pair_node), which a module's whole call
// strings together. A small call's cost is its Python and its boxed op calls, not its math: at
// T=1 B=1 H=64 the LSTM's products take 1.5 us of a 20 us module call (benchmarks/NOTES.md).
// These run the same functions the ops do, so their results are the ops' bit for bit.
//
// Each returns nullopt where the call must go through the dispatcher instead, so that whatever
// watches or transforms ops sees them: a gradient may follow (grad mode on and a tensor that
// requires it) where the function takes none, a dispatch mode, functorch transform or autocast
// is active (any key in the thread's included dispatch keys beyond ADInplaceOrView), the
// profiler or another RecordFunction observer is on, or a tensor is not a plain strided CPU
// tensor. Bad arguments raise, as the ops do.

#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/intrusive_ptr.h>

#include <functional>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace torch::autograd {
struct Node;
}  // namespace torch::autograd

namespace fusedrnn {

// A whole module: every layer and direction. cell: nn.RNNBase's mode, "LSTM", "GRU",
// "RNN_TANH" or "RNN_RELU".
// input [T, B, I] (batch_first: [B, T, I]), or unbatched [T, I]; hx: empty (zeros), or the
// module's states, h [L*D, B, P] (and c [L*D, B, H] for the LSTM), [L*D, P] unbatched;
// weights: the module's flat weights, per layer and direction w_ih, w_hh, then b_ih, b_hh
// where `bias`, then w_hr where `projection`; dropout: the probability between layers (0
// unless training). Where a gradient may follow, each layer whose tensors require one is its
// node (direct_layer_node's, direct_layer_pair_node's for both directions), and the ops between
// layers (a state's unit, dropout, the directions' concatenation, the final states' stack) are
// autograd's, as modules.py's _run_layers calls them.
// -> output [T, B, D*P] ([B, T, D*P] batch_first), final states as hx.
std::optional<std::tuple<at::Tensor, std::vector<at::Tensor>>> direct_module_forward(
    const std::string& cell, const at::Tensor& input, const std::vector<at::Tensor>& hx,
    const std::vector<at::Tensor>& weights, int64_t layers, bool bidirectional, bool bias,
    bool projection, bool batch_first, double dropout);

// A module's call on a PackedSequence (data [rows, I], batch_sizes, and its sorted_indices and
// unsorted_indices where it has them), as direct_module_forward's: hx
// empty or in the caller's batch order, [L*D, B, P] (and [L*D, B, H]), moved into the sorted
// order and the final states back out of it, as torch.nn moves them. -> the output's data
// [rows, D*P], the final states.
std::optional<std::tuple<at::Tensor, std::vector<at::Tensor>>> direct_packed_forward(
    const std::string& cell, const at::Tensor& data, const at::Tensor& batch_sizes,
    const std::optional<at::Tensor>& sorted_indices,
    const std::optional<at::Tensor>& unsorted_indices, const std::vector<at::Tensor>& hx,
    const std::vector<at::Tensor>& weights, int64_t layers, bool bidirectional, bool bias,
    bool projection, double dropout);

// One step of a cell. input [B, I], or unbatched [I]; hx: empty (zeros), or h [B, H] (and c
// for the LSTM), [H] unbatched; weights: w_ih, w_hh, and b_ih, b_hh if it has biases. -> the
// new states as hx.
std::optional<std::vector<at::Tensor>> direct_cell_forward(const std::string& cell,
                                                           const at::Tensor& input,
                                                           const std::vector<at::Tensor>& hx,
                                                           const std::vector<at::Tensor>& weights);

// One step of a cell where a gradient may follow (grad mode on, a tensor that requires it), as
// one autograd node in C++ around the layer functions, where the Python autograd.Function
// around the ops cost more than a small step's math (benchmarks/NOTES.md). Arguments and
// result as direct_cell_forward's; nullopt where the call must go through the dispatcher, as
// above but for the gradient, and the caller must also route forward-mode AD, torch.func and
// compilers to the ops (modules.py's direct_path_applies). The node's backward runs the fused
// backward op; under create_graph, or with batched gradients (vmap), it takes the same
// gradients in ATen's differentiable ops from the step's saved activations (no product runs
// again), which the node keeps as an output of its own so that their gradient comes back to it.
std::optional<std::vector<at::Tensor>> direct_cell_step(const std::string& cell,
                                                        const at::Tensor& input,
                                                        const std::vector<at::Tensor>& hx,
                                                        const std::vector<at::Tensor>& weights);

// A one-direction layer's call where a gradient may follow, as the same node: input [T, B, I]
// (or a PackedSequence's data [rows, I], with its batch_sizes), hx its h0 (and c0) [B, P] (and
// [B, H]), weights w_ih, w_hh (and b_ih, b_hh; then the LSTM's w_hr where it projects to P).
// -> output [T, B, P] ([rows, P]; memory of its own), hn (and cn); nullopt as
// direct_cell_step. At T=1 (a decoder stepping nn.LSTM one step at a time) without packing or
// projection, the node's backward is direct_cell_step's. Over a sequence, where grad mode is on
// in the backward or gradients come batched, the backward is the Python Functions'
// (python_layer_backward), so that their double backward, second_order.py's pass, takes it as
// it takes theirs.
std::optional<std::vector<at::Tensor>> direct_layer_node(
    const std::string& cell, const at::Tensor& input, const std::vector<at::Tensor>& hx,
    const std::vector<at::Tensor>& weights, const std::optional<at::Tensor>& batch_sizes);

// Both directions of a layer's call where a gradient may follow, as one node around the pair
// ops (side by side on two threads): input [T, B, I] (or packed, as direct_layer_node's); hx
// the forward direction's h0 (and c0), then the reverse's; weights the forward's, then the
// reverse's, each as direct_layer_node's. -> each direction's output and hn (and cn), the
// forward's first, as direct_layer_node's; nullopt as direct_cell_step. Its backward is the
// pair backward op, or, as direct_layer_node's over a sequence, the Python pair Function's.
std::optional<std::vector<at::Tensor>> direct_layer_pair_node(
    const std::string& cell, const at::Tensor& input, const std::vector<at::Tensor>& hx,
    const std::vector<at::Tensor>& weights, const std::optional<at::Tensor>& batch_sizes);

// The layer nodes' backward in Python: (cell; whether the node is a pair's; the node; its saved
// tensors: its inputs, then per direction its copy of the output and the activations its
// forward kept; the gradients of the outputs and the final states, undefined where none came;
// which inputs need a gradient; the batch_sizes of packed input) -> a gradient per input,
// undefined where none. Set by the binding layer (ops.cpp) to fusedrnn/ops.py's
// _layer_node_backward.
using PythonLayerBackward = std::function<std::vector<at::Tensor>(
    const char* cell, bool pair, const c10::intrusive_ptr<torch::autograd::Node>& node,
    const std::vector<at::Tensor>& saved, const std::vector<at::Tensor>& grads,
    const std::vector<bool>& needed, const std::optional<at::Tensor>& batch_sizes)>;
void set_python_layer_backward(PythonLayerBackward backward);

}  // namespace fusedrnn
