// Both directions of a bidirectional layer in one op (layer.h: the *_pair ops), side by side on
// the CPU where torch runs two threads.
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <tuple>
#include <vector>

#include "layer.h"

namespace fusedrnn {

namespace {

// Runs run(0) and run(1), a layer's two directions, side by side on the CPU where torch runs
// two threads: one thread each (their loops, GEMMs and ATen calls then run single-threaded), so
// no core idles. A direction's steps at B=16, H=128 ran only 1.6x faster on two threads than on
// one (too short to split well), so two one-thread loops side by side beat two two-thread loops
// in turn. With more threads a direction takes them all, in turn: a team cannot be split.
template <typename Run>
void both_directions(const Tensor& like, const Run& run) {
  if (like.is_cpu() && at::get_num_threads() == 2 && !at::in_parallel_region()) {
    // The caller's thread-local state (grad and forward-AD modes, inference mode, dispatch
    // keys) holds on the other thread too: OpenMP's threads do not inherit it.
    const at::ThreadLocalState state;
    at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
      const at::ThreadLocalStateGuard guard(state);
      for (int64_t d = begin; d < end; ++d) run(d);
    });
    return;
  }
  run(0);
  run(1);
}

void check_pair(const char* op, std::initializer_list<size_t> sizes) {
  for (const size_t size : sizes)
    TORCH_CHECK(size == 2, op, ": each per-direction argument must be a list of two tensors "
                               "[forward, reverse], got a list of ", size);
}

// call(d) -> the tuple of direction d's results; -> both tuples' tensors, flat.
template <typename Call>
std::vector<Tensor> pair_of(const Tensor& like, const Call& call) {
  decltype(call(0)) results[2];
  both_directions(like, [&](int64_t d) { results[d] = call(d); });
  std::vector<Tensor> flat;
  for (const auto& result : results)
    std::apply([&](const auto&... t) { (flat.push_back(t), ...); }, result);
  return flat;
}

}  // namespace

std::vector<Tensor> lstm_forward_pair(const Tensor& input, Tensors h0, Tensors c0, Tensors w_ih,
                                      Tensors w_hh, const OptionalTensors& b_ih,
                                      const OptionalTensors& b_hh, bool training,
                                      const OptionalTensor& batch_sizes,
                                      const OptionalTensors& w_hr) {
  check_pair("fusedrnn.lstm_forward_pair",
             {h0.size(), c0.size(), w_ih.size(), w_hh.size(), b_ih.size(), b_hh.size(),
              w_hr.size()});
  return pair_of(input, [&](int64_t d) {
    return lstm_forward(input, h0[d], c0[d], w_ih[d], w_hh[d], b_ih.get(d), b_hh.get(d), d == 1,
                        training, batch_sizes, w_hr.get(d));
  });
}

std::vector<Tensor> lstm_backward_pair(
    const OptionalTensors& grad_output, const OptionalTensors& grad_hn,
    const OptionalTensors& grad_cn, const Tensor& input, Tensors h0, Tensors c0, Tensors w_ih,
    Tensors w_hh, Tensors output, Tensors gates, Tensors cells, bool has_bias,
    const OptionalTensor& batch_sizes, const OptionalTensors& w_hr,
    const OptionalTensors& unprojected, bool weight_grads, bool h0_grad) {
  check_pair("fusedrnn.lstm_backward_pair",
             {grad_output.size(), grad_hn.size(), grad_cn.size(), h0.size(), c0.size(),
              w_ih.size(), w_hh.size(), output.size(), gates.size(), cells.size(), w_hr.size(),
              unprojected.size()});
  return pair_of(input, [&](int64_t d) {
    return lstm_backward(grad_output.get(d), grad_hn.get(d), grad_cn.get(d), input, h0[d], c0[d],
                         w_ih[d], w_hh[d], output[d], gates[d], cells[d], has_bias, d == 1,
                         batch_sizes, w_hr.get(d), unprojected.get(d), weight_grads, h0_grad);
  });
}

std::vector<Tensor> gru_forward_pair(const Tensor& input, Tensors h0, Tensors w_ih, Tensors w_hh,
                                     const OptionalTensors& b_ih, const OptionalTensors& b_hh,
                                     bool training, const OptionalTensor& batch_sizes) {
  check_pair("fusedrnn.gru_forward_pair",
             {h0.size(), w_ih.size(), w_hh.size(), b_ih.size(), b_hh.size()});
  return pair_of(input, [&](int64_t d) {
    return gru_forward(input, h0[d], w_ih[d], w_hh[d], b_ih.get(d), b_hh.get(d), d == 1,
                       training, batch_sizes);
  });
}

std::vector<Tensor> gru_backward_pair(const OptionalTensors& grad_output,
                                      const OptionalTensors& grad_hn, const Tensor& input,
                                      Tensors h0, Tensors w_ih, Tensors w_hh, Tensors output,
                                      Tensors saved, bool has_bias,
                                      const OptionalTensor& batch_sizes, bool weight_grads,
                                      bool h0_grad) {
  check_pair("fusedrnn.gru_backward_pair",
             {grad_output.size(), grad_hn.size(), h0.size(), w_ih.size(), w_hh.size(),
              output.size(), saved.size()});
  return pair_of(input, [&](int64_t d) {
    return gru_backward(grad_output.get(d), grad_hn.get(d), input, h0[d], w_ih[d], w_hh[d],
                        output[d], saved[d], has_bias, d == 1, batch_sizes, weight_grads,
                        h0_grad);
  });
}

std::vector<Tensor> rnn_forward_pair(const Tensor& input, Tensors h0, Tensors w_ih, Tensors w_hh,
                                     const OptionalTensors& b_ih, const OptionalTensors& b_hh,
                                     bool relu, const OptionalTensor& batch_sizes) {
  check_pair("fusedrnn.rnn_forward_pair",
             {h0.size(), w_ih.size(), w_hh.size(), b_ih.size(), b_hh.size()});
  return pair_of(input, [&](int64_t d) {
    return rnn_forward(input, h0[d], w_ih[d], w_hh[d], b_ih.get(d), b_hh.get(d), relu, d == 1,
                       batch_sizes);
  });
}

std::vector<Tensor> rnn_backward_pair(const OptionalTensors& grad_output,
                                      const OptionalTensors& grad_hn, const Tensor& input,
                                      Tensors h0, Tensors w_ih, Tensors w_hh, Tensors output,
                                      bool has_bias, bool relu, const OptionalTensor& batch_sizes,
                                      bool weight_grads, bool h0_grad) {
  check_pair("fusedrnn.rnn_backward_pair",
             {grad_output.size(), grad_hn.size(), h0.size(), w_ih.size(), w_hh.size(),
              output.size()});
  return pair_of(input, [&](int64_t d) {
    return rnn_backward(grad_output.get(d), grad_hn.get(d), input, h0[d], w_ih[d], w_hh[d],
                        output[d], has_bias, relu, d == 1, batch_sizes, weight_grads, h0_grad);
  });
}

}  // namespace fusedrnn
