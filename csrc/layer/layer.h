// One recurrent layer in one direction, forward and backward through time, for each cell.
// These are the dispatcher ops' implementations (registered in ops.cpp), one file per cell
// (lstm.cpp, gru.cpp, rnn.cpp; both directions in bidirectional.cpp): they validate and allocate
// (prepare.h), run the GEMMs over the whole sequence (projections.h) and the loop over time on
// the backend chosen for the call (backend.h, recurrence.h).
//
// Shapes: input [T, B, I]; h0, c0 [B, H]; w_ih [G*H, I]; w_hh [G*H, H]; b_ih, b_hh [G*H];
// output [T, B, H]. `reverse` runs the sequence from t = T-1 down to 0 (the backward direction
// of a bidirectional layer). `training` keeps what the backward needs; otherwise nothing per step.
// With `batch_sizes` (a PackedSequence's: [T] int64 on the CPU, non-increasing), input is the
// packed data [rows, I], step t runs on its first batch_sizes[t] rows only, and every per-step
// buffer (output, saved tensors, gradients) is packed the same way; B = batch_sizes[0]. Each
// sequence's final state is taken at its own last step, and a reverse pass starts each sequence
// at its own last element.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <vector>

namespace fusedrnn {

using at::Tensor;
using OptionalTensor = std::optional<Tensor>;
using Tensors = c10::ArrayRef<Tensor>;
using OptionalTensors = c10::List<OptionalTensor>;

// LSTM with an optional projection w_hr [P, H] (h_t = (o_t * tanh(c_t)) W_hr^T; then h0, hn
// and output are P wide and w_hh is [4H, P]).
// -> output, hn, cn, gates [T, B, 4H] (activations), cells [T, B, H] (c_t), unprojected
// [T, B, H] (o_t * tanh(c_t), with a projection only); the last three are empty unless training.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
    const Tensor& w_hh, const OptionalTensor& b_ih, const OptionalTensor& b_hh, bool reverse,
    bool training, const OptionalTensor& batch_sizes, const OptionalTensor& w_hr);

// -> grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias (the gradient of b_ih and of
// b_hh alike; empty without bias), grad_w_hr (empty without a projection). Without
// weight_grads, the weights' and biases' gradients are all empty (and their GEMMs skipped): for
// frozen weights, and calls that want the input's and states' gradients alone. Without h0_grad,
// grad_h0 is empty and the last product, which only it needs, skipped: for a zero initial state
// (at T=1 a quarter of the backward's products).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const OptionalTensor& grad_output, const OptionalTensor& grad_hn, const OptionalTensor& grad_cn,
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& output, const Tensor& gates, const Tensor& cells, bool has_bias, bool reverse,
    const OptionalTensor& batch_sizes, const OptionalTensor& w_hr,
    const OptionalTensor& unprojected, bool weight_grads, bool h0_grad = true);

// -> output, hn, saved [T, B, 4H] (r, z, n, h W_hn^T + b_hn; empty unless training).
std::tuple<Tensor, Tensor, Tensor> gru_forward(
    const Tensor& input, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
    const OptionalTensor& b_ih, const OptionalTensor& b_hh, bool reverse, bool training,
    const OptionalTensor& batch_sizes);

// -> grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh (the last two empty
// without bias; weight_grads and h0_grad as for the LSTM).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const OptionalTensor& grad_output, const OptionalTensor& grad_hn, const Tensor& input,
    const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& output,
    const Tensor& saved, bool has_bias, bool reverse, const OptionalTensor& batch_sizes,
    bool weight_grads, bool h0_grad = true);

// Elman RNN, tanh or relu. The output is all the backward needs. -> output, hn.
std::tuple<Tensor, Tensor> rnn_forward(
    const Tensor& input, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
    const OptionalTensor& b_ih, const OptionalTensor& b_hh, bool relu, bool reverse,
    const OptionalTensor& batch_sizes);

// -> grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_bias (as for the LSTM).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_backward(
    const OptionalTensor& grad_output, const OptionalTensor& grad_hn, const Tensor& input,
    const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& output,
    bool has_bias, bool relu, bool reverse, const OptionalTensor& batch_sizes, bool weight_grads,
    bool h0_grad = true);

// Both directions of a bidirectional layer in one call: each per-direction argument is a list
// of two, [forward, reverse], and the results are the one-direction op's, the forward's then the
// reverse's, in one flat list. On the CPU with two threads the directions run side by side, one
// thread each (bidirectional.cpp, both_directions); otherwise one after the other. h0_grad
// holds for both directions.
std::vector<Tensor> lstm_forward_pair(const Tensor& input, Tensors h0, Tensors c0, Tensors w_ih,
                                      Tensors w_hh, const OptionalTensors& b_ih,
                                      const OptionalTensors& b_hh, bool training,
                                      const OptionalTensor& batch_sizes,
                                      const OptionalTensors& w_hr);
std::vector<Tensor> lstm_backward_pair(
    const OptionalTensors& grad_output, const OptionalTensors& grad_hn,
    const OptionalTensors& grad_cn, const Tensor& input, Tensors h0, Tensors c0, Tensors w_ih,
    Tensors w_hh, Tensors output, Tensors gates, Tensors cells, bool has_bias,
    const OptionalTensor& batch_sizes, const OptionalTensors& w_hr,
    const OptionalTensors& unprojected, bool weight_grads, bool h0_grad = true);
std::vector<Tensor> gru_forward_pair(const Tensor& input, Tensors h0, Tensors w_ih, Tensors w_hh,
                                     const OptionalTensors& b_ih, const OptionalTensors& b_hh,
                                     bool training, const OptionalTensor& batch_sizes);
std::vector<Tensor> gru_backward_pair(const OptionalTensors& grad_output,
                                      const OptionalTensors& grad_hn, const Tensor& input,
                                      Tensors h0, Tensors w_ih, Tensors w_hh, Tensors output,
                                      Tensors saved, bool has_bias,
                                      const OptionalTensor& batch_sizes, bool weight_grads,
                                      bool h0_grad = true);
std::vector<Tensor> rnn_forward_pair(const Tensor& input, Tensors h0, Tensors w_ih, Tensors w_hh,
                                     const OptionalTensors& b_ih, const OptionalTensors& b_hh,
                                     bool relu, const OptionalTensor& batch_sizes);
std::vector<Tensor> rnn_backward_pair(const OptionalTensors& grad_output,
                                      const OptionalTensors& grad_hn, const Tensor& input,
                                      Tensors h0, Tensors w_ih, Tensors w_hh, Tensors output,
                                      bool has_bias, bool relu, const OptionalTensor& batch_sizes,
                                      bool weight_grads, bool h0_grad = true);

}  // namespace fusedrnn
