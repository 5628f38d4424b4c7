// The dispatcher ops (schemas, CPU and CUDA registrations), and the Python module's build info
// and scratch-memory controls.
// Fake kernels and autograd live in Python, beside the public wrappers (fusedrnn/ops.py).
#include <torch/extension.h>
#include <torch/library.h>

#include "layer.h"
#include "scratch.h"

TORCH_LIBRARY(fusedrnn, m) {
  m.def("lstm_forward(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
        "Tensor? b_hh, bool reverse, bool training, Tensor? batch_sizes=None, Tensor? w_hr=None) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("lstm_backward(Tensor? grad_output, Tensor? grad_hn, Tensor? grad_cn, Tensor input, "
        "Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor output, Tensor gates, "
        "Tensor cells, bool has_bias, bool reverse, Tensor? batch_sizes=None, Tensor? w_hr=None, "
        "Tensor? unprojected=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("gru_forward(Tensor input, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
        "Tensor? b_hh, bool reverse, bool training, Tensor? batch_sizes=None) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("gru_backward(Tensor? grad_output, Tensor? grad_hn, Tensor input, Tensor h0, "
        "Tensor w_ih, Tensor w_hh, Tensor output, Tensor saved, bool has_bias, bool reverse, "
        "Tensor? batch_sizes=None) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("rnn_forward(Tensor input, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
        "Tensor? b_hh, bool relu, bool reverse, Tensor? batch_sizes=None) -> (Tensor, Tensor)");
  m.def("rnn_backward(Tensor? grad_output, Tensor? grad_hn, Tensor input, Tensor h0, "
        "Tensor w_ih, Tensor w_hh, Tensor output, bool has_bias, bool relu, bool reverse, "
        "Tensor? batch_sizes=None) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Both directions of a bidirectional layer (layer.h): per-direction arguments as lists of
  // two, [forward, reverse]; the results of both, flat.
  m.def("lstm_forward_pair(Tensor input, Tensor[] h0, Tensor[] c0, Tensor[] w_ih, "
        "Tensor[] w_hh, Tensor?[] b_ih, Tensor?[] b_hh, bool training, Tensor? batch_sizes, "
        "Tensor?[] w_hr) -> Tensor[]");
  m.def("lstm_backward_pair(Tensor?[] grad_output, Tensor?[] grad_hn, Tensor?[] grad_cn, "
        "Tensor input, Tensor[] h0, Tensor[] c0, Tensor[] w_ih, Tensor[] w_hh, Tensor[] output, "
        "Tensor[] gates, Tensor[] cells, bool has_bias, Tensor? batch_sizes, Tensor?[] w_hr, "
        "Tensor?[] unprojected) -> Tensor[]");
  m.def("gru_forward_pair(Tensor input, Tensor[] h0, Tensor[] w_ih, Tensor[] w_hh, "
        "Tensor?[] b_ih, Tensor?[] b_hh, bool training, Tensor? batch_sizes) -> Tensor[]");
  m.def("gru_backward_pair(Tensor?[] grad_output, Tensor?[] grad_hn, Tensor input, "
        "Tensor[] h0, Tensor[] w_ih, Tensor[] w_hh, Tensor[] output, Tensor[] saved, "
        "bool has_bias, Tensor? batch_sizes) -> Tensor[]");
  m.def("rnn_forward_pair(Tensor input, Tensor[] h0, Tensor[] w_ih, Tensor[] w_hh, "
        "Tensor?[] b_ih, Tensor?[] b_hh, bool relu, Tensor? batch_sizes) -> Tensor[]");
  m.def("rnn_backward_pair(Tensor?[] grad_output, Tensor?[] grad_hn, Tensor input, "
        "Tensor[] h0, Tensor[] w_ih, Tensor[] w_hh, Tensor[] output, bool has_bias, bool relu, "
        "Tensor? batch_sizes) -> Tensor[]");
}

// One device-generic driver per op: the GEMMs go through ATen, and the per-step kernel is
// chosen by the tensors' device (kernels/pointwise_cpu.cpp or kernels/pointwise_cuda.cu).
#define FUSEDRNN_REGISTER_OPS(m)                               \
  m.impl("lstm_forward", &fusedrnn::lstm_forward);             \
  m.impl("lstm_backward", &fusedrnn::lstm_backward);           \
  m.impl("gru_forward", &fusedrnn::gru_forward);               \
  m.impl("gru_backward", &fusedrnn::gru_backward);             \
  m.impl("rnn_forward", &fusedrnn::rnn_forward);               \
  m.impl("rnn_backward", &fusedrnn::rnn_backward);             \
  m.impl("lstm_forward_pair", &fusedrnn::lstm_forward_pair);   \
  m.impl("lstm_backward_pair", &fusedrnn::lstm_backward_pair); \
  m.impl("gru_forward_pair", &fusedrnn::gru_forward_pair);     \
  m.impl("gru_backward_pair", &fusedrnn::gru_backward_pair);   \
  m.impl("rnn_forward_pair", &fusedrnn::rnn_forward_pair);     \
  m.impl("rnn_backward_pair", &fusedrnn::rnn_backward_pair);

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) { FUSEDRNN_REGISTER_OPS(m) }
#ifdef FUSEDRNN_WITH_CUDA
TORCH_LIBRARY_IMPL(fusedrnn, CUDA, m) { FUSEDRNN_REGISTER_OPS(m) }
#endif

// setup.py passes the torch version built against, unquoted; spell it as a string.
#define FUSEDRNN_STR_(x) #x
#define FUSEDRNN_STR(x) FUSEDRNN_STR_(x)

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.attr("torch_version") = FUSEDRNN_STR(FUSEDRNN_TORCH_VERSION);
  // The pool of CPU temporaries kept between calls (scratch.h).
  m.def("scratch_held_bytes", &fusedrnn::scratch::held_bytes);
  m.def("scratch_limit_bytes", &fusedrnn::scratch::limit_bytes);
  m.def("set_scratch_limit_bytes", &fusedrnn::scratch::set_limit_bytes);
  m.def("empty_cache", &fusedrnn::scratch::empty_cache);
#ifdef FUSEDRNN_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
