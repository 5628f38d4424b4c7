// C entry points of the forward ops for AOTInductor packages. A package calls an op outside
// ATen through its proxy executor, which rebuilds the call from a serialized description and
// goes through the dispatcher: about 30 us a call on a 2-core Zen 3, as much as a small
// layer's T=1 step. Told of these functions (by fusedrnn/aoti.py), Inductor calls them directly
// instead, with AOTInductor's C ABI (torchgen's conventions for ATen's shims: a Tensor is an
// AtenTensorHandle; a Tensor? a pointer to one, null for None; a list a pointer and a length;
// a bool an int32_t; each result written through a pointer). The function names follow
// Inductor's rule, aoti_torch_<device>_<op name>; the ops are device-generic, so the CPU and
// CUDA entry points run the same code (Inductor is told of CUDA's only on request until they
// have run on a GPU).
//
// The model library finds these symbols in the process's global scope: fusedrnn makes its
// library (libfusedrnn.so, which holds this file) global when imported (fusedrnn/aoti.py); a
// C++ program loads the library RTLD_GLOBAL.
#include "aoti_shims.h"

#include <torch/csrc/inductor/aoti_torch/utils.h>

#include <tuple>
#include <utility>
#include <vector>

#include "layer.h"

namespace fusedrnn {
namespace {

using torch::aot_inductor::new_tensor_handle;
using torch::aot_inductor::resolve_tensor_dispatch_flags;
using torch::aot_inductor::resolve_tensor_list_dispatch_flags;

std::vector<AotiShim>& shim_table() {
  static std::vector<AotiShim> table;
  return table;
}

bool list_shim(const char* op, const char* parameters) {
  shim_table().push_back({op, parameters});
  return true;
}

Tensor tensor(AtenTensorHandle handle) { return resolve_tensor_dispatch_flags(handle); }

OptionalTensor optional(AtenTensorHandle* handle) { return resolve_tensor_dispatch_flags(handle); }

std::vector<Tensor> tensors(const AtenTensorHandle* handles, int64_t count) {
  return resolve_tensor_list_dispatch_flags(handles, count);
}

OptionalTensors optionals(const AtenTensorHandle** handles, int64_t count) {
  OptionalTensors list;
  for (auto& t : resolve_tensor_list_dispatch_flags(handles, count)) list.push_back(std::move(t));
  return list;
}

// Hands each result to the caller, who owns the handles from here; one result pointer each.
template <size_t count, typename... Results>
void hand_out(std::tuple<Results...>&& results, AtenTensorHandle* (&outs)[count]) {
  static_assert(sizeof...(Results) == count);
  std::apply([&](auto&... r) { int i = 0; ((*outs[i++] = new_tensor_handle(std::move(r))), ...); },
             results);
}

// A pair op's flat list has a fixed length per cell (layer.h), which Inductor unrolls into
// that many result pointers.
template <size_t count>
void hand_out(std::vector<Tensor>&& results, AtenTensorHandle* (&outs)[count]) {
  TORCH_CHECK(results.size() == count, "fusedrnn: a pair op gave ", results.size(),
              " results where its C entry point has ", count);
  for (size_t i = 0; i < count; ++i) *outs[i] = new_tensor_handle(std::move(results[i]));
}

}  // namespace

// One op's entry points for both devices, and its parameter list for the declarations Inductor
// writes into the model's source.
#define FUSEDRNN_AOTI_ENTRY(device, op, parameters, ...) \
  extern "C" AOTITorchError aoti_torch_##device##_##op parameters { \
    AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE(__VA_ARGS__)         \
  }
#define FUSEDRNN_AOTI_SHIM(op, parameters, ...)            \
  FUSEDRNN_AOTI_ENTRY(cpu, op, parameters, __VA_ARGS__)    \
  FUSEDRNN_AOTI_ENTRY(cuda, op, parameters, __VA_ARGS__)   \
  namespace {                                              \
  const bool op##_listed = list_shim(#op, #parameters);    \
  }

FUSEDRNN_AOTI_SHIM(
    lstm_forward,
    (AtenTensorHandle input, AtenTensorHandle h0, AtenTensorHandle c0, AtenTensorHandle w_ih,
     AtenTensorHandle w_hh, AtenTensorHandle* b_ih, AtenTensorHandle* b_hh, int32_t reverse,
     int32_t training, AtenTensorHandle* batch_sizes, AtenTensorHandle* w_hr,
     AtenTensorHandle* ret0, AtenTensorHandle* ret1, AtenTensorHandle* ret2,
     AtenTensorHandle* ret3, AtenTensorHandle* ret4, AtenTensorHandle* ret5),
    {
      AtenTensorHandle* outs[] = {ret0, ret1, ret2, ret3, ret4, ret5};
      hand_out(lstm_forward(tensor(input), tensor(h0), tensor(c0), tensor(w_ih), tensor(w_hh),
                            optional(b_ih), optional(b_hh), reverse, training,
                            optional(batch_sizes), optional(w_hr)),
               outs);
    })

FUSEDRNN_AOTI_SHIM(
    gru_forward,
    (AtenTensorHandle input, AtenTensorHandle h0, AtenTensorHandle w_ih, AtenTensorHandle w_hh,
     AtenTensorHandle* b_ih, AtenTensorHandle* b_hh, int32_t reverse, int32_t training,
     AtenTensorHandle* batch_sizes, AtenTensorHandle* ret0, AtenTensorHandle* ret1,
     AtenTensorHandle* ret2),
    {
      AtenTensorHandle* outs[] = {ret0, ret1, ret2};
      hand_out(gru_forward(tensor(input), tensor(h0), tensor(w_ih), tensor(w_hh), optional(b_ih),
                           optional(b_hh), reverse, training, optional(batch_sizes)),
               outs);
    })

FUSEDRNN_AOTI_SHIM(
    rnn_forward,
    (AtenTensorHandle input, AtenTensorHandle h0, AtenTensorHandle w_ih, AtenTensorHandle w_hh,
     AtenTensorHandle* b_ih, AtenTensorHandle* b_hh, int32_t relu, int32_t reverse,
     AtenTensorHandle* batch_sizes, AtenTensorHandle* ret0, AtenTensorHandle* ret1),
    {
      AtenTensorHandle* outs[] = {ret0, ret1};
      hand_out(rnn_forward(tensor(input), tensor(h0), tensor(w_ih), tensor(w_hh), optional(b_ih),
                           optional(b_hh), relu, reverse, optional(batch_sizes)),
               outs);
    })

FUSEDRNN_AOTI_SHIM(
    lstm_forward_pair,
    (AtenTensorHandle input, const AtenTensorHandle* h0, int64_t h0_len_,
     const AtenTensorHandle* c0, int64_t c0_len_, const AtenTensorHandle* w_ih,
     int64_t w_ih_len_, const AtenTensorHandle* w_hh, int64_t w_hh_len_,
     const AtenTensorHandle** b_ih, int64_t b_ih_len_, const AtenTensorHandle** b_hh,
     int64_t b_hh_len_, int32_t training, AtenTensorHandle* batch_sizes,
     const AtenTensorHandle** w_hr, int64_t w_hr_len_, AtenTensorHandle* ret0,
     AtenTensorHandle* ret1, AtenTensorHandle* ret2, AtenTensorHandle* ret3,
     AtenTensorHandle* ret4, AtenTensorHandle* ret5, AtenTensorHandle* ret6,
     AtenTensorHandle* ret7, AtenTensorHandle* ret8, AtenTensorHandle* ret9,
     AtenTensorHandle* ret10, AtenTensorHandle* ret11),
    {
      AtenTensorHandle* outs[] = {ret0, ret1, ret2, ret3, ret4,  ret5,
                                  ret6, ret7, ret8, ret9, ret10, ret11};
      hand_out(lstm_forward_pair(tensor(input), tensors(h0, h0_len_), tensors(c0, c0_len_),
                                 tensors(w_ih, w_ih_len_), tensors(w_hh, w_hh_len_),
                                 optionals(b_ih, b_ih_len_), optionals(b_hh, b_hh_len_),
                                 training, optional(batch_sizes), optionals(w_hr, w_hr_len_)),
               outs);
    })

FUSEDRNN_AOTI_SHIM(
    gru_forward_pair,
    (AtenTensorHandle input, const AtenTensorHandle* h0, int64_t h0_len_,
     const AtenTensorHandle* w_ih, int64_t w_ih_len_, const AtenTensorHandle* w_hh,
     int64_t w_hh_len_, const AtenTensorHandle** b_ih, int64_t b_ih_len_,
     const AtenTensorHandle** b_hh, int64_t b_hh_len_, int32_t training,
     AtenTensorHandle* batch_sizes, AtenTensorHandle* ret0, AtenTensorHandle* ret1,
     AtenTensorHandle* ret2, AtenTensorHandle* ret3, AtenTensorHandle* ret4,
     AtenTensorHandle* ret5),
    {
      AtenTensorHandle* outs[] = {ret0, ret1, ret2, ret3, ret4, ret5};
      hand_out(gru_forward_pair(tensor(input), tensors(h0, h0_len_), tensors(w_ih, w_ih_len_),
                                tensors(w_hh, w_hh_len_), optionals(b_ih, b_ih_len_),
                                optionals(b_hh, b_hh_len_), training, optional(batch_sizes)),
               outs);
    })

FUSEDRNN_AOTI_SHIM(
    rnn_forward_pair,
    (AtenTensorHandle input, const AtenTensorHandle* h0, int64_t h0_len_,
     const AtenTensorHandle* w_ih, int64_t w_ih_len_, const AtenTensorHandle* w_hh,
     int64_t w_hh_len_, const AtenTensorHandle** b_ih, int64_t b_ih_len_,
     const AtenTensorHandle** b_hh, int64_t b_hh_len_, int32_t relu,
     AtenTensorHandle* batch_sizes, AtenTensorHandle* ret0, AtenTensorHandle* ret1,
     AtenTensorHandle* ret2, AtenTensorHandle* ret3),
    {
      AtenTensorHandle* outs[] = {ret0, ret1, ret2, ret3};
      hand_out(rnn_forward_pair(tensor(input), tensors(h0, h0_len_), tensors(w_ih, w_ih_len_),
                                tensors(w_hh, w_hh_len_), optionals(b_ih, b_ih_len_),
                                optionals(b_hh, b_hh_len_), relu, optional(batch_sizes)),
               outs);
    })

const std::vector<AotiShim>& aoti_shims() { return shim_table(); }

}  // namespace fusedrnn
