// The dispatcher ops: their schemas, and their CPU and CUDA registrations. Part of fusedrnn's
// library (libfusedrnn.so), which holds no Python: a C++ program that loads it can run them,
// and the AOTInductor packages that call them (setup.py). Fake kernels and autograd for Python
// live beside the public wrappers (fusedrnn/ops.py); the Python module is python_module.cpp.
#include <torch/library.h>

#include "layer/layer.h"

TORCH_LIBRARY(fusedrnn, m) {
  m.def("lstm_forward(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
        "Tensor? b_hh, bool reverse, bool training, Tensor? batch_sizes=None, Tensor? w_hr=None) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("lstm_backward(Tensor? grad_output, Tensor? grad_hn, Tensor? grad_cn, Tensor input, "
        "Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor output, Tensor gates, "
        "Tensor cells, bool has_bias, bool reverse, Tensor? batch_sizes=None, Tensor? w_hr=None, "
        "Tensor? unprojected=None, bool weight_grads=True, bool h0_grad=True) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("gru_forward(Tensor input, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
        "Tensor? b_hh, bool reverse, bool training, Tensor? batch_sizes=None) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("gru_backward(Tensor? grad_output, Tensor? grad_hn, Tensor input, Tensor h0, "
        "Tensor w_ih, Tensor w_hh, Tensor output, Tensor saved, bool has_bias, bool reverse, "
        "Tensor? batch_sizes=None, bool weight_grads=True, bool h0_grad=True) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("rnn_forward(Tensor input, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
        "Tensor? b_hh, bool relu, bool reverse, Tensor? batch_sizes=None) -> (Tensor, Tensor)");
  m.def("rnn_backward(Tensor? grad_output, Tensor? grad_hn, Tensor input, Tensor h0, "
        "Tensor w_ih, Tensor w_hh, Tensor output, bool has_bias, bool relu, bool reverse, "
        "Tensor? batch_sizes=None, bool weight_grads=True, bool h0_grad=True) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Both directions of a bidirectional layer (layer.h): per-direction arguments as lists of
  // two, [forward, reverse]; the results of both, flat.
  m.def("lstm_forward_pair(Tensor input, Tensor[] h0, Tensor[] c0, Tensor[] w_ih, "
        "Tensor[] w_hh, Tensor?[] b_ih, Tensor?[] b_hh, bool training, Tensor? batch_sizes, "
        "Tensor?[] w_hr) -> Tensor[]");
  m.def("lstm_backward_pair(Tensor?[] grad_output, Tensor?[] grad_hn, Tensor?[] grad_cn, "
        "Tensor input, Tensor[] h0, Tensor[] c0, Tensor[] w_ih, Tensor[] w_hh, Tensor[] output, "
        "Tensor[] gates, Tensor[] cells, bool has_bias, Tensor? batch_sizes, Tensor?[] w_hr, "
        "Tensor?[] unprojected, bool weight_grads=True, bool h0_grad=True) -> Tensor[]");
  m.def("gru_forward_pair(Tensor input, Tensor[] h0, Tensor[] w_ih, Tensor[] w_hh, "
        "Tensor?[] b_ih, Tensor?[] b_hh, bool training, Tensor? batch_sizes) -> Tensor[]");
  m.def("gru_backward_pair(Tensor?[] grad_output, Tensor?[] grad_hn, Tensor input, "
        "Tensor[] h0, Tensor[] w_ih, Tensor[] w_hh, Tensor[] output, Tensor[] saved, "
        "bool has_bias, Tensor? batch_sizes, bool weight_grads=True, bool h0_grad=True) "
        "-> Tensor[]");
  m.def("rnn_forward_pair(Tensor input, Tensor[] h0, Tensor[] w_ih, Tensor[] w_hh, "
        "Tensor?[] b_ih, Tensor?[] b_hh, bool relu, Tensor? batch_sizes) -> Tensor[]");
  m.def("rnn_backward_pair(Tensor?[] grad_output, Tensor?[] grad_hn, Tensor input, "
        "Tensor[] h0, Tensor[] w_ih, Tensor[] w_hh, Tensor[] output, bool has_bias, bool relu, "
        "Tensor? batch_sizes, bool weight_grads=True, bool h0_grad=True) -> Tensor[]");
}

// One device-generic driver per op (layer/): each call runs its loop on the backend chosen for
// it (layer/backend.h).
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
