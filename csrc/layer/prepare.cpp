#include "prepare.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>

#include "../cpu/isa.h"

namespace fusedrnn {
namespace {

void check_device(const char* op, const char* name, const Tensor& t, c10::Device device) {
  TORCH_CHECK(t.device() == device, op, ": ", name, " is on ", t.device(), " but input is on ",
              device);
}

// t on the input's device and of the caller's input dtype.
void check_like(const char* op, const char* name, const Tensor& t, c10::Device device,
                at::ScalarType dtype) {
  check_device(op, name, t, device);
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " has dtype ", t.scalar_type(),
              " but input has dtype ", dtype);
}

void check_shape(const char* op, const char* name, const Tensor& t, at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", expected, ", got ",
              t.sizes());
}

void check_argument(const char* op, const char* name, const Tensor& t, at::IntArrayRef shape,
                    c10::Device device, at::ScalarType dtype) {
  check_shape(op, name, t, shape);
  check_like(op, name, t, device, dtype);
}

bool runs_widened(const Tensor& input) {
  return input.is_cpu() &&
         (input.scalar_type() == at::kHalf || input.scalar_type() == at::kBFloat16);
}

}  // namespace

Dtype dtype_of(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return Dtype::kFloat32;
    case at::kDouble: return Dtype::kFloat64;
    case at::kHalf: return Dtype::kFloat16;
    case at::kBFloat16: return Dtype::kBFloat16;
    default:
      TORCH_CHECK(false, "fusedrnn: unsupported dtype ", t.scalar_type(),
                  "; expected float32, float64, float16 or bfloat16");
  }
}

LayerCall::LayerCall(const char* op_, int64_t gates, const Tensor& input_,
                     const OptionalTensor& batch_sizes, const Tensor& h0_, const Tensor& w_ih_,
                     const Tensor& w_hh_, const OptionalTensor& b_ih_, const OptionalTensor& b_hh_,
                     const OptionalTensor& w_hr_, bool reverse_)
    : op(op_),
      steps(layout_of(op_, input_, batch_sizes)),
      reverse(reverse_),
      caller_dtype_(input_.scalar_type()),
      guard_(input_.device()),
      temporaries_(input_) {
  B = steps.B, I = input_.size(-1);
  dtype_of(input_);
  const char* w_hh_shape = w_hr_ ? "*H, P]" : "*H, H]";
  TORCH_CHECK(w_hh_.dim() == 2 && w_hh_.size(0) % gates == 0, op, ": w_hh must be [", gates,
              w_hh_shape, ", got shape ", w_hh_.sizes());
  H = w_hh_.size(0) / gates;
  TORCH_CHECK(H > 0, op, ": w_hh must have at least one hidden unit, got shape ", w_hh_.sizes());
  P = w_hr_ ? w_hr_->size(0) : H;
  TORCH_CHECK(w_hh_.size(1) == P, op, ": w_hh must be [", gates, w_hh_shape, ", got shape ",
              w_hh_.sizes());
  const c10::Device device = input_.device();
  if (w_hr_) check_argument(op, "w_hr", *w_hr_, {P, H}, device, caller_dtype_);
  check_shape(op, "w_ih", w_ih_, {gates * H, I});
  check_shape(op, "h0", h0_, {B, P});
  check_like(op, "w_ih", w_ih_, device, caller_dtype_);
  check_like(op, "w_hh", w_hh_, device, caller_dtype_);
  check_like(op, "h0", h0_, device, caller_dtype_);
  TORCH_CHECK(b_ih_.has_value() == b_hh_.has_value(), op, ": pass both b_ih and b_hh, or neither");
  if (b_ih_) {
    check_shape(op, "b_ih", *b_ih_, {gates * H});
    check_shape(op, "b_hh", *b_hh_, {gates * H});
    check_like(op, "b_ih", *b_ih_, device, caller_dtype_);
    check_like(op, "b_hh", *b_hh_, device, caller_dtype_);
  }
  input = prepared(input_), h0 = prepared(h0_), w_ih = prepared(w_ih_), w_hh = prepared(w_hh_);
  w_ih_passed = w_ih_, w_hh_passed = w_hh_;
  if (w_hr_) w_hr = prepared(*w_hr_);
  if (b_ih_) b_ih = prepared(*b_ih_), b_hh = prepared(*b_hh_);
  product_dtype = input_.is_cpu() && caller_dtype_ == at::kBFloat16 && cpu::has_bf16_products()
                      ? Dtype::kBFloat16
                      : dtype_of(input);
  backend = choose_backend({input.device(), input.scalar_type(), steps.T, w_hr_.has_value(), gates,
                            H, B, steps.uniform})
                .backend;
}

Tensor LayerCall::prepared(const Tensor& t) const {
  if (!runs_widened(t)) return t.contiguous();
  // Into the pool of temporaries: widened arguments never leave the call (results() rounds every
  // result back), and fresh ones were faulted in page by page on every call.
  Tensor widened = temporary(t.sizes(), at::kFloat);
  widened.copy_(t);
  return widened;
}

Tensor LayerCall::result_like(int64_t width) const {
  if (caller_dtype_ == input.scalar_type()) return sequence_like(input, width);
  return temporary(sequence_sizes(input, width), input.scalar_type());
}

Tensor LayerCall::argument(const char* name, const Tensor& t, at::IntArrayRef shape) const {
  check_argument(op, name, t, shape, input.device(), caller_dtype_);
  return prepared(t);
}

Tensor LayerCall::workspace(const char* name, const Tensor& t, at::IntArrayRef shape) const {
  check_shape(op, name, t, shape);
  check_device(op, name, t, input.device());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but a ", caller_dtype_, " layer keeps ", input.scalar_type(),
              " on ", input.device(), ": pass what the forward op returned");
  return t.contiguous();
}

Tensor LayerCall::gradient(const char* name, const OptionalTensor& g,
                           at::IntArrayRef shape) const {
  if (!g || !g->defined()) return Tensor();
  return argument(name, *g, shape);
}

Tensor LayerCall::gradient_or_zeros(const char* name, const OptionalTensor& g,
                                    at::IntArrayRef shape) const {
  const Tensor t = gradient(name, g, shape);
  // A copy even where already prepared: the loop accumulates into it.
  return t.defined() ? (t.is_same(*g) ? t.clone() : t) : at::zeros(shape, options());
}

}  // namespace fusedrnn
