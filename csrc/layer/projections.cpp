#include "projections.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <vector>

#include "../cpu/isa.h"
#include "../cpu/recurrence.h"
#include "gemm.h"
#include "packed_weights.h"
#include "recurrence.h"

namespace fusedrnn {

namespace {

// out[r, :] = bias (+ bias_2) for every row, in a plain loop: for small CPU outputs (a single
// step), where ATen's expand and add cost 2.5 us, more than the step's math.
template <typename T>
void biases_by_rows(T* out, int64_t rows, int64_t width, const T* bias, const T* bias_2) {
  for (int64_t r = 0; r < rows; ++r, out += width) {
    if (bias_2) {
      for (int64_t j = 0; j < width; ++j) out[j] = bias[j] + bias_2[j];
    } else {
      std::copy_n(bias, width, out);
    }
  }
}

// Rows from which a whole-sequence product may run on packed weights: below, packing the
// weights (and converting the operands to bfloat16) costs more than it saves.
constexpr int64_t kMinPackedRows = 64;

// Whether the call's whole-sequence GEMMs run on bfloat16 operands the CPU way: a bfloat16
// call on a CPU with bfloat16 dot products (the input projection on the fused product's
// kernels, the others on oneDNN's bfloat16 GEMMs, ATen's for bfloat16 tensors: twice the
// float32 rate), from kMinPackedRows. (On CUDA, bfloat16 runs in cuBLAS as it comes.)
bool in_bf16(const LayerCall& call) {
  return call.input.is_cpu() && call.product_dtype == Dtype::kBFloat16 &&
         call.steps.rows >= kMinPackedRows;
}

// Whether the input projection runs on the fused product's kernels, over W_ih packed for the
// call, rather than on the BLAS: with bfloat16 products (in_bf16), and for float32 on AVX2 with
// up to 64 input features, from kMinPackedRows. With so short a K, MKL's passes over the output
// besides the product (zeroing it for beta = 0, packing) cost more than packing W_ih does. On
// a Zen 3, interleaved in one process, LSTM T=100: inference at B=16 H=64 1.07x-1.09x, B=64
// H=64 1.18x, B=1 H=64 1.15x, B=64 H=32 1.10x, training 1.03x-1.06x; GRU B=1 H=64 1.12x. At 128
// input features MKL was 4-7% faster, at 512 14%. AVX-512 CPUs keep the BLAS (oneDNN's for
// large products) until measured there.
bool projects_on_panels(const LayerCall& call) {
  constexpr int64_t kMaxFeatures = 64;
  return in_bf16(call) ||
         (call.input.is_cpu() && call.input.scalar_type() == at::kFloat &&
          call.product_dtype == Dtype::kFloat32 && call.I <= kMaxFeatures &&
          call.steps.rows >= kMinPackedRows && cpu::active_isa() == cpu::Isa::kAvx2);
}

}  // namespace

// float32 on AVX2: each step's rows must reuse what the loop streams of W_ih beside W_hh: from 8
// rows. Both matrices must stay near the core: up to 256 input features and 256 units.
//
// float32 on AVX-512 (an Intel Xeon 6, full-rate): up to 64 input features and units, from 16
// rows. Interleaved, LSTM inference at T=100: B=16 H=64 1.21x, B=32 1.23x, B=64 H=32 1.07x-1.25x,
// B=16 H=32 1.14x; RNN B=32 H=64 1.05x; training 1.01x-1.02x. Wider, it lost: B=16 H=128
// 0.86x, H=256 0.72x, B=8 H=256 0.96x (B=32 H=128 1.04x).
// Where the gates are not kept (LSTM inference: two steps' gates, which stay in the cache), also
// up to 128 features and units from 32 rows. On an Intel Ice Lake, interleaved, LSTM inference
// at H=128: B=32 1.00x-1.09x, B=48 1.30x, B=64 1.10x-1.24x, B=96 1.25x, B=128 1.09x-1.16x,
// B=256 1.02x; B=64 at H=96 1.20x, H=32 I=128 1.16x, I=16 1.29x. LSTM training, whose kept gates
// go to memory either way, did not gain (0.93x-0.99x at B=48 and 64), nor did the RNN (1.00x).
//
// bfloat16 on AMX: the whole-sequence projection writes T * B * G * H float32 to memory for the
// loop to read back, which costs more than streaming W_ih beside W_hh once a step has rows
// enough to reuse it, the more the wider the two: from 4 rows up to I + H = 256, 16 up to 768,
// else 32. Interleaved, LSTM inference at T=100: B=64 I=H=512 1.23x, B=32 1.24x, B=24 1.11x,
// B=16 0.73x-0.93x; B=16 H=256 1.30x, B=8 0.88x; B=8 H=64 1.30x, B=4 1.13x; T=48 B=32 H=128
// 1.41x. Training 1.00x-1.08x.
bool projects_in_loop(const LayerCall& call, bool gates_kept) {
  if (call.backend != Backend::kCpuFused) return false;
  if (call.product_dtype == Dtype::kBFloat16) {
    const int64_t width = call.I + call.H;
    const int64_t min_rows = width <= 256 ? 4 : width <= 768 ? 16 : 32;
    return cpu::active_isa() == cpu::Isa::kAmx && call.B >= min_rows;
  }
  if (cpu::active_isa() >= cpu::Isa::kAvx512) {
    const auto up_to = [&](int64_t width, int64_t min_rows) {
      return call.B >= min_rows && call.I <= width && call.H <= width;
    };
    return call.product_dtype == Dtype::kFloat32 &&
           (up_to(64, 16) || (!gates_kept && up_to(128, 32)));
  }
  constexpr int64_t kMaxWidth = 256, kMinRows = 8;
  return call.B >= kMinRows && call.I <= kMaxWidth && call.H <= kMaxWidth &&
         cpu::active_isa() == cpu::Isa::kAvx2;
}

namespace {

// t in bfloat16, as a temporary of the call unless it is already.
Tensor rounded(const LayerCall& call, const Tensor& t) {
  if (t.scalar_type() == at::kBFloat16) return t;
  Tensor copy = call.temporary(t.sizes(), at::kBFloat16);
  copy.copy_(t);
  return copy;
}

// From this many columns (G*H), the weight gradients' GEMMs take their gradient rounded into a
// transposed copy, [G*H, rows]: oneDNN's bfloat16 GEMMs reduce over the rows faster from that
// layout than from the gradient's own (AMX, Xeon model 207, 6400 rows by 512 features,
// interleaved: 1.37x-1.45x from 1024 to 2048 columns, 1.29x at 768, but 0.66x-0.72x at 512). The
// gradient of the input runs faster on the gradient's own layout (0.60x-0.71x transposed).
constexpr int64_t kMinColumnsTransposed = 768;

// d laid out like the input, [..., G*H] float32, rounded to bfloat16 into a [G*H, rows]
// temporary of the call (ATen's transposing copy took 48 ms for 6400 x 2048, ten times a plain
// rounding's; this takes about a plain rounding's 6 ms, both bound by memory). In the bfloat16
// LSTM's training step at T=100 B=64 I=H=512 the two weight gradients' GEMMs went from 47-55 ms
// to 37, the backward 1.02x (the GRU's 1.03x), interleaved: the LSTM rounds d twice now, as
// the input's gradient reads d's own layout.
// With `sum` defined ([G*H] float32), d's sum over its rows in the same pass (the bias gradient:
// ATen's sum read the 52 MB again, 1.7% of that LSTM's training step).
Tensor rounded_columns(const LayerCall& call, const Tensor& d, const Tensor& sum) {
  const int64_t cols = d.size(-1), rows = d.numel() / cols;
  const Tensor in = d.contiguous();
  Tensor columns = call.temporary({cols, rows}, at::kBFloat16);
  float* const sums = sum.defined() ? sum.data_ptr<float>() : nullptr;
  constexpr int64_t kColumnsPerTask = 64;
  at::parallel_for(0, cols, kColumnsPerTask, [&](int64_t first, int64_t last) {
    cpu::round_transposed(in.const_data_ptr<float>(), rows, cols, first, last,
                          columns.data_ptr(), sums);
  });
  return columns;
}

// The weight gradients' operand, [G*H, rows] bfloat16: the transposed copy, or the rows' view.
Tensor by_columns(const GemmOperand& operand) {
  if (operand.columns.defined()) return operand.columns;
  return operand.rows.view({-1, operand.rows.size(-1)}).t();
}

// Each row's h_{t-1} (a row of h0 or of output), laid out like the output.
Tensor states_before(const Pass& pass, const Tensor& h0, const Tensor& output) {
  const Layout& L = pass.steps;
  const int64_t H = h0.size(1);
  const Tensor rows = output.view({-1, H});
  if (L.uniform) {
    // Forward, step t pairs with output step t - 1; reverse, with step t + 1; the first step
    // processed with h0.
    return pass.reverse ? at::cat({rows.narrow(0, L.B, L.rows - L.B), h0})
                        : at::cat({h0, rows.narrow(0, 0, L.rows - L.B)});
  }
  std::vector<int64_t> source(L.rows);  // row of cat(h0, output)
  for (int64_t s = 0; s < L.T; ++s) {
    const int64_t first = pass.first_row(s), had = s ? pass.batch(s - 1) : 0;
    for (int64_t b = 0; b < pass.batch(s); ++b)
      source[first + b] = b < had ? L.B + pass.first_row(s - 1) + b : b;
  }
  const Tensor index = at::tensor(source, at::kLong).to(h0.device());
  return at::cat({h0, rows}).index_select(0, index);
}

bool small_on_cpu(const Tensor& out, const OptionalTensor& bias, const OptionalTensor& bias_2) {
  constexpr int64_t kSmall = int64_t{1} << 16;  // elements; past that ATen's threads pay
  const auto plain = [&](const OptionalTensor& b) { return !b || b->is_contiguous(); };
  const at::ScalarType dtype = out.scalar_type();
  return out.is_cpu() && out.numel() <= kSmall && plain(bias) && plain(bias_2) &&
         (dtype == at::kFloat || dtype == at::kDouble);
}

}  // namespace

// The biases go in first and the GEMM adds to them; or, on the fused product's kernels
// (projects_on_panels), the product starts from them.
Tensor project_input(const LayerCall& call, const OptionalTensor& bias,
                     const OptionalTensor& bias_2, Tensor out) {
  const Tensor &input = call.input, &w_ih = call.w_ih;
  const int64_t rows = call.steps.rows, G_H = w_ih.size(0);
  // Nothing here is differentiated (the autograd Functions are), but grad mode can still be on
  // (under torch.compile, for one), and ATen's out= calls refuse inputs that require grad then.
  const c10::NoGradGuard no_grad;
  if (projects_on_panels(call)) {
    const cpu::Panels panels =
        cpu::panels_for(call.product_dtype, G_H / call.H, call.H, call.I);
    const Tensor packed = packed_weights(panels, w_ih, true, call.w_ih_passed);
    const Tensor biases = bias && bias_2 ? bias->add(*bias_2) : bias ? *bias : Tensor();
    const void* start = biases.defined() ? biases.data_ptr() : nullptr;
    cpu::fused_product(Dtype::kFloat32, cpu::Product{&panels, packed.data_ptr(), input.data_ptr(),
                                                     out.data_ptr(), rows, false, start});
    return out;
  }
  if (bias && small_on_cpu(out, bias, bias_2)) {
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "project_input", [&] {
      biases_by_rows(out.data_ptr<scalar_t>(), rows, G_H, bias->data_ptr<scalar_t>(),
                     bias_2 ? bias_2->data_ptr<scalar_t>() : nullptr);
    });
  } else if (bias && bias_2) {
    at::add_out(out, bias->expand(out.sizes()), *bias_2);
  } else if (bias) {
    out.copy_(bias->expand(out.sizes()));
  }
  gemm(input, Gemm{rows, G_H, input.size(-1), input.data_ptr(), false, w_ih.data_ptr(), true,
                   out.data_ptr(), bias.has_value()});
  return out;
}

bool projects_by_rows(const LayerCall& call) { return !projects_on_panels(call); }

void project_input_rows(const LayerCall& call, const OptionalTensor& bias,
                        const OptionalTensor& bias_2, const Tensor& out, int64_t row,
                        int64_t rows) {
  const Tensor &input = call.input, &w_ih = call.w_ih;
  const int64_t G_H = w_ih.size(0);
  const c10::NoGradGuard no_grad;  // as project_input
  if (bias) {
    const Tensor first = bias->contiguous();
    const Tensor second = bias_2 ? bias_2->contiguous() : Tensor();
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "project_input_rows", [&] {
      biases_by_rows(static_cast<scalar_t*>(at_row(out, row)), rows, G_H,
                     first.data_ptr<scalar_t>(),
                     second.defined() ? second.data_ptr<scalar_t>() : nullptr);
    });
  }
  gemm(input, Gemm{rows, G_H, input.size(-1), at_row(input, row), false, w_ih.data_ptr(), true,
                   at_row(out, row), bias.has_value()});
}

Tensor grad_w_hh(const LayerCall& call, const GemmOperand& d_operand, const Tensor& output) {
  const Pass pass = call.pass();
  const Layout& L = pass.steps;
  const Tensor &h0 = call.h0, &d_pre = d_operand.d;
  const int64_t H = h0.size(1), G_H = d_pre.size(-1);
  if (in_bf16(call)) {
    const Tensor h_prev = states_before(pass, rounded(call, h0), rounded(call, output));
    return at::mm(by_columns(d_operand), h_prev);
  }
  Tensor grad = fresh({G_H, H}, h0.options());
  if (L.uniform) {
    // Two GEMMs: the first step processed pairs with h0, the rest with the output one step
    // earlier (forward: d_pre[1:] with output[:-1]; reverse: d_pre[:-1] with output[1:]).
    gemm(h0, Gemm{G_H, H, L.B, at_row(d_pre, pass.first_row(0)), true, h0.data_ptr(), false,
                  grad.data_ptr(), false});
    gemm(h0, Gemm{G_H, H, L.rows - L.B, at_row(d_pre, pass.reverse ? 0 : L.B), true,
                  at_row(output, pass.reverse ? L.B : 0), false, grad.data_ptr(), true});
    return grad;
  }
  // Packed: each row's h_{t-1} gathered beside it, then one GEMM.
  const Tensor h_prev = states_before(pass, h0, output);
  gemm(h0, Gemm{G_H, H, L.rows, d_pre.data_ptr(), true, h_prev.data_ptr(), false, grad.data_ptr(),
                false});
  return grad;
}

std::tuple<Tensor, Tensor> grads_through_input(const LayerCall& call,
                                               const GemmOperand& d_operand, bool with_w_ih) {
  const Tensor &input = call.input, &w_ih = call.w_ih, &d_x = d_operand.d;
  const int64_t rows = call.steps.rows, I = input.size(-1), G_H = w_ih.size(0);
  if (in_bf16(call)) {
    const Tensor by_rows = d_operand.rows.view({rows, G_H});
    return {at::mm(by_rows, rounded(call, w_ih)).view(input.sizes()),
            with_w_ih ? at::mm(by_columns(d_operand), rounded(call, input).view({rows, I}))
                      : fresh({0}, by_rows.options())};
  }
  Tensor grad_input = at::empty_like(input);
  gemm(input, Gemm{rows, I, G_H, d_x.data_ptr(), false, w_ih.data_ptr(), false,
                   grad_input.data_ptr(), false});
  if (!with_w_ih) return {grad_input, fresh({0}, w_ih.options())};
  Tensor grad_w_ih = at::empty_like(w_ih);
  gemm(input, Gemm{G_H, I, rows, d_x.data_ptr(), true, input.data_ptr(), false,
                   grad_w_ih.data_ptr(), false});
  return {grad_input, grad_w_ih};
}

GemmOperand gemm_operand(const LayerCall& call, const Tensor& d, bool for_input,
                         bool weight_grads, bool with_sum) {
  if (!in_bf16(call)) return {d};
  GemmOperand operand{d};
  const bool transposed = weight_grads && d.size(-1) >= kMinColumnsTransposed;
  if (for_input || (weight_grads && !transposed)) operand.rows = rounded(call, d);
  if (transposed) {
    if (with_sum) operand.sum = at::empty({d.size(-1)}, d.options());
    operand.columns = rounded_columns(call, d, operand.sum);
  }
  return operand;
}

Tensor bias_grad(const GemmOperand& d_operand, bool has_bias) {
  const Tensor& d = d_operand.d;
  if (!has_bias) return fresh({0}, d.options());
  return d_operand.sum.defined() ? d_operand.sum : d.view({-1, d.size(-1)}).sum(0);
}

}  // namespace fusedrnn
