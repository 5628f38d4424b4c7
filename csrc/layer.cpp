#include "layer.h"

#include <ATen/ATen.h>
#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/GradMode.h>

#include <cstring>
#include <memory>
#include <tuple>
#include <utility>
#include <vector>
#ifdef FUSEDRNN_WITH_CUDA
#include <ATen/cuda/CUDAContextLight.h>
#include <c10/cuda/CUDAStream.h>
#include <cublas_v2.h>

#include "step_gemm_cuda.h"
#endif

#include "kernels/pointwise.h"
#include "kernels/recurrent_cpu.h"
#include "scratch.h"

#if AT_MKLDNN_ENABLED()
namespace at::native {
// result = beta * result + alpha * mat1 mat2 on oneDNN, the library torch.nn's CPU RNNs run on.
// ATen exports it without shipping its header; declared weak, so that a torch without it (or with
// another signature) leaves it null and the GEMMs stay on at::mm.
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result,
                             float beta, float alpha) __attribute__((weak));
}  // namespace at::native
#endif

namespace fusedrnn {
namespace {

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

// Runs one per-step kernel on the device of `like`, on PyTorch's current stream.
template <typename Args>
void run_step(const Tensor& like, const Args& args) {
  if (like.is_cuda()) {
#ifdef FUSEDRNN_WITH_CUDA
    cuda::step(dtype_of(like), args, c10::cuda::getCurrentCUDAStream(like.device().index()).stream());
#else
    TORCH_CHECK(false, "fusedrnn was built without CUDA; reinstall it where nvcc and a CUDA build "
                       "of torch are present (see the README)");
#endif
  } else {
    TORCH_CHECK(like.is_cpu(), "fusedrnn: tensors on ", like.device(), " are not supported");
    cpu::step(dtype_of(like), args);
  }
}

// Row-major C[M, N] = op(A)[M, K] op(B)[K, N] (+ C when accumulating), where op(X) = X^T for a
// matrix stored transposed. Every GEMM of an op goes through here, most of them once per step on
// raw rows of the sequence buffers: on CUDA straight into cuBLAS, since a dispatcher round trip
// per step would cost more than a small step's math.
struct Gemm {
  int64_t M, N, K;
  const void* a;
  bool a_transposed;  // a: [M, K], or [K, M] when transposed
  const void* b;
  bool b_transposed;  // b: [K, N], or [N, K] when transposed
  void* c;            // [M, N]
  bool accumulate;
};

#ifdef FUSEDRNN_WITH_CUDA
// cuBLAS on PyTorch's handle (bound to the current stream). float32 uses TF32 exactly when
// torch.backends.cudnn.allow_tf32 is set, the switch torch.nn's RNNs follow on the GPU; half
// types accumulate in float32.
void gemm_cuda(at::ScalarType dtype, const Gemm& g) {
  cudaDataType io = CUDA_R_32F;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  const float one_f = 1, beta_f = g.accumulate ? 1 : 0;
  const double one_d = 1, beta_d = g.accumulate ? 1 : 0;
  const void *one = &one_f, *beta = &beta_f;
  switch (dtype) {
    case at::kFloat:
      if (at::globalContext().allowTF32CuDNN()) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
      break;
    case at::kDouble:
      io = CUDA_R_64F, compute = CUBLAS_COMPUTE_64F, one = &one_d, beta = &beta_d;
      break;
    case at::kHalf: io = CUDA_R_16F; break;
    case at::kBFloat16: io = CUDA_R_16BF; break;
    default: TORCH_CHECK(false, "fusedrnn: no GEMM for ", dtype);
  }
  // Column-major, as cuBLAS sees it: C^T[N, M] = op(B)^T[N, K] op(A)^T[K, M].
  const cublasStatus_t status = cublasGemmEx(
      at::cuda::getCurrentCUDABlasHandle(), g.b_transposed ? CUBLAS_OP_T : CUBLAS_OP_N,
      g.a_transposed ? CUBLAS_OP_T : CUBLAS_OP_N, int(g.N), int(g.M), int(g.K), one, g.b, io,
      int(g.b_transposed ? g.K : g.N), g.a, io, int(g.a_transposed ? g.M : g.K), beta, g.c, io,
      int(g.N), compute, CUBLAS_GEMM_DEFAULT);
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "fusedrnn: cublasGemmEx failed with status ",
              int(status));
}
#endif

// A row-major matrix over borrowed memory, for the CPU path.
Tensor matrix(const void* data, int64_t rows, int64_t cols, bool transposed,
              const at::TensorOptions& options) {
  void* p = const_cast<void*>(data);
  return transposed ? at::from_blob(p, {cols, rows}, options).t()
                    : at::from_blob(p, {rows, cols}, options);
}

// float32 GEMMs from 8M multiply-adds go to oneDNN: on the development CPU it ran the layers'
// GEMMs 4-23% faster than at::mm (MKL's sgemm), and below that size its ~10 us of set-up a call
// outweighs the gain. Not where the user switched oneDNN off (torch.backends.mkldnn.enabled),
// which also keeps torch.nn's RNNs off it.
bool runs_on_onednn(const Tensor& like, const Gemm& g) {
#if AT_MKLDNN_ENABLED()
  constexpr int64_t kMinWork = int64_t{1} << 23;
  // Checked once on a 2x2 product: the function is not public API, and a torch whose version
  // refuses float32 (or reads its arguments otherwise) keeps every GEMM on at::mm.
  static const bool works = [] {
    if (at::native::mkldnn_matmul == nullptr) return false;
    try {
      const Tensor a = at::tensor({1.f, 2.f, 3.f, 4.f}).view({2, 2});
      const Tensor b = at::tensor({5.f, 6.f, 7.f, 8.f}).view({2, 2}).t();
      const Tensor c = at::ones({2, 2});
      at::native::mkldnn_matmul(a, b, c, 1.f, 1.f);
      return at::equal(c, at::mm(a, b) + 1);
    } catch (const std::exception&) {
      return false;
    }
  }();
  return like.scalar_type() == at::kFloat && g.M * g.N * g.K >= kMinWork &&
         at::globalContext().userEnabledMkldnn() && works;
#else
  return false;
#endif
}

void gemm(const Tensor& like, const Gemm& g) {
  if (g.M == 0 || g.N == 0) return;
  if (g.K == 0) {  // an empty sum
    if (!g.accumulate) matrix(g.c, g.M, g.N, false, like.options()).zero_();
    return;
  }
  if (like.is_cuda()) {
#ifdef FUSEDRNN_WITH_CUDA
    return gemm_cuda(like.scalar_type(), g);
#endif
  }
  // The CPU BLAS is reachable only through ATen ops (and, for oneDNN, its exported matmul).
  const Tensor a = matrix(g.a, g.M, g.K, g.a_transposed, like.options());
  const Tensor b = matrix(g.b, g.K, g.N, g.b_transposed, like.options());
  Tensor c = matrix(g.c, g.M, g.N, false, like.options());
  if (runs_on_onednn(like, g))
    return at::native::mkldnn_matmul(a, b, c, g.accumulate ? 1.f : 0.f, 1.f);
  if (g.accumulate) c.addmm_(a, b);
  else at::mm_out(c, a, b);
}

// Where each time step's rows live in a sequence buffer: step t holds batch[t] rows from row
// offset[t] on. Padded input [T, B, ...] is the case batch[t] = B; a PackedSequence's data
// [rows, ...] has batch[t] = batch_sizes[t], which never grows with t.
struct Layout {
  int64_t T = 0, B = 0, rows = 0;
  std::vector<int64_t> batch, offset;
  bool uniform = true;  // every step has all B rows
};

// Address of row r of a contiguous sequence buffer ([T, B, W] or [rows, W]), or null for an
// undefined one.
void* at_row(const Tensor& seq, int64_t r) {
  if (!seq.defined()) return nullptr;
  return static_cast<char*>(seq.data_ptr()) + r * seq.size(-1) * seq.element_size();
}

// The shape of a sequence buffer laid out like the input, `width` wide.
std::vector<int64_t> sequence_sizes(const Tensor& input, int64_t width) {
  auto sizes = input.sizes().vec();
  sizes.back() = width;
  return sizes;
}

// A sequence buffer laid out like the input, `width` wide.
Tensor sequence_like(const Tensor& input, int64_t width) {
  return at::empty(sequence_sizes(input, width), input.options());
}

struct Sizes {
  Layout steps;
  int64_t I, H;
  int64_t P;  // width of the hidden state: the LSTM's projection size, else H
};

void check_like(const char* op, const char* name, const Tensor& t, const Tensor& input) {
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " is on ", t.device(),
              " but input is on ", input.device());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but input has dtype ", input.scalar_type());
}

void check_shape(const char* op, const char* name, const Tensor& t, at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", expected, ", got ",
              t.sizes());
}

Layout layout_of(const char* op, const Tensor& input, const OptionalTensor& batch_sizes) {
  Layout L;
  if (!batch_sizes) {
    TORCH_CHECK(input.dim() == 3, op, ": input must be 3-D [T, B, I], got shape ", input.sizes());
    L.T = input.size(0), L.B = input.size(1), L.rows = L.T * L.B;
    TORCH_CHECK(L.T > 0, op, ": the sequence length must be at least 1, got 0");
    L.batch.assign(L.T, L.B);
    for (int64_t t = 0; t < L.T; ++t) L.offset.push_back(t * L.B);
    return L;
  }
  const Tensor& sizes = *batch_sizes;
  TORCH_CHECK(input.dim() == 2, op, ": packed input must be 2-D [rows, I], got shape ",
              input.sizes());
  TORCH_CHECK(sizes.dim() == 1 && sizes.scalar_type() == at::kLong && sizes.is_cpu(), op,
              ": batch_sizes must be a 1-D int64 CPU tensor, as in a PackedSequence");
  TORCH_CHECK(sizes.numel() > 0, op, ": the sequence length must be at least 1, got 0");
  const Tensor counts = sizes.contiguous();
  const int64_t* batch = counts.data_ptr<int64_t>();
  L.T = counts.numel(), L.B = batch[0], L.uniform = true;
  for (int64_t t = 0; t < L.T; ++t) {
    TORCH_CHECK(batch[t] > 0 && batch[t] <= (t ? batch[t - 1] : batch[0]), op,
                ": batch_sizes must be positive and non-increasing, got ", sizes);
    L.uniform = L.uniform && batch[t] == L.B;
    L.batch.push_back(batch[t]);
    L.offset.push_back(L.rows);
    L.rows += batch[t];
  }
  TORCH_CHECK(L.rows == input.size(0), op, ": batch_sizes add up to ", L.rows,
              " rows, but input has ", input.size(0));
  return L;
}

// Validates one layer's arguments for a cell with `gates` gate blocks and, for the LSTM, an
// optional projection w_hr [P, H]; returns the sizes.
Sizes check_layer(const char* op, int64_t gates, const Tensor& input,
                  const OptionalTensor& batch_sizes, const Tensor& h0, const Tensor& w_ih,
                  const Tensor& w_hh, const OptionalTensor& b_ih, const OptionalTensor& b_hh,
                  const OptionalTensor& w_hr = std::nullopt) {
  Sizes s{layout_of(op, input, batch_sizes), input.size(-1), 0, 0};
  dtype_of(input);
  const char* w_hh_shape = w_hr ? "*H, P]" : "*H, H]";
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) % gates == 0, op, ": w_hh must be [", gates,
              w_hh_shape, ", got shape ", w_hh.sizes());
  s.H = w_hh.size(0) / gates;
  s.P = w_hr ? w_hr->size(0) : s.H;
  TORCH_CHECK(w_hh.size(1) == s.P, op, ": w_hh must be [", gates, w_hh_shape, ", got shape ",
              w_hh.sizes());
  if (w_hr) {
    check_shape(op, "w_hr", *w_hr, {s.P, s.H});
    check_like(op, "w_hr", *w_hr, input);
  }
  check_shape(op, "w_ih", w_ih, {gates * s.H, s.I});
  check_shape(op, "h0", h0, {s.steps.B, s.P});
  check_like(op, "w_ih", w_ih, input);
  check_like(op, "w_hh", w_hh, input);
  check_like(op, "h0", h0, input);
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), op, ": pass both b_ih and b_hh, or neither");
  if (b_ih) {
    check_shape(op, "b_ih", *b_ih, {gates * s.H});
    check_shape(op, "b_hh", *b_hh, {gates * s.H});
    check_like(op, "b_ih", *b_ih, input);
    check_like(op, "b_hh", *b_hh, input);
  }
  return s;
}

// Checks a tensor the forward saved for the backward and makes it contiguous: the kernels read
// it row by row, whatever the caller passes.
Tensor saved_tensor(const char* op, const char* name, const Tensor& t, at::IntArrayRef shape,
                    const Tensor& input) {
  check_shape(op, name, t, shape);
  check_like(op, name, t, input);
  return t.contiguous();
}

// Checks a gradient from autograd and makes it contiguous; undefined stays undefined.
Tensor grad_or_undefined(const char* op, const char* name, const OptionalTensor& g,
                         at::IntArrayRef shape, const Tensor& input) {
  if (!g || !g->defined()) return Tensor();
  check_shape(op, name, *g, shape);
  check_like(op, name, *g, input);
  return g->contiguous();
}

Tensor grad_or_zeros(const char* op, const char* name, const OptionalTensor& g,
                     at::IntArrayRef shape, const Tensor& input) {
  Tensor t = grad_or_undefined(op, name, g, shape, input);
  return t.defined() ? t.clone() : at::zeros(shape, input.options());
}

// x W_ih^T + bias (+ bias_2) for all time steps at once, into `out` (laid out like the input,
// G*H wide): the biases go in first, in one ATen call, and the GEMM adds to them.
Tensor project_input(const Tensor& input, const Tensor& w_ih, const OptionalTensor& bias,
                     const OptionalTensor& bias_2, Tensor out) {
  const int64_t rows = input.numel() / input.size(-1), G_H = w_ih.size(0);
  // Nothing here is differentiated (the autograd Functions are), but grad mode can still be on
  // (under torch.compile, for one), and ATen's out= calls refuse inputs that require grad then.
  const c10::NoGradGuard no_grad;
  if (bias && bias_2) at::add_out(out, bias->expand(out.sizes()), *bias_2);
  else if (bias) out.copy_(bias->expand(out.sizes()));
  gemm(input, Gemm{rows, G_H, input.size(-1), input.data_ptr(), false, w_ih.data_ptr(), true,
                   out.data_ptr(), bias.has_value()});
  return out;
}

// float16 and bfloat16 on the CPU run as float32: the fused CPU recurrence has float32 and
// float64 kernels, and a loop of half-precision GEMMs and scalar gate math ran 5-8x slower than
// torch.nn's oneDNN path. The op's tensors widen exactly; each result is rounded to the caller's
// dtype once, at the end (what oneDNN's bfloat16 LSTM also computes in: float32 arithmetic on
// half-precision inputs).
bool runs_widened(const Tensor& input) {
  return input.is_cpu() &&
         (input.scalar_type() == at::kHalf || input.scalar_type() == at::kBFloat16);
}

Tensor widened(const Tensor& t) {
  return t.defined() && t.is_floating_point() ? t.to(at::kFloat) : t;
}

OptionalTensor widened(const OptionalTensor& t) {
  return t ? OptionalTensor(widened(*t)) : std::nullopt;
}

template <typename... Results>
std::tuple<Results...> narrowed(std::tuple<Results...> results, at::ScalarType dtype) {
  const auto narrow = [&](Tensor& result) {
    if (result.defined()) result = result.to(dtype);
  };
  std::apply([&](auto&... result) { (narrow(result), ...); }, results);
  return results;
}

// The time index of the s-th step processed.
int64_t time_of(int64_t s, int64_t T, bool reverse) { return reverse ? T - 1 - s : s; }

// The order in which one direction visits the steps, and where their states come from.
struct Pass {
  const Layout& steps;
  bool reverse;

  int64_t time(int64_t s) const { return time_of(s, steps.T, reverse); }
  int64_t batch(int64_t s) const { return steps.batch[time(s)]; }
  int64_t first_row(int64_t s) const { return steps.offset[time(s)]; }

  // The state (h or c, [B, H]) entering the s-th step: `initial` for the first, else the rows
  // that the step before left at `previous`. A reverse pass over packed sequences meets longer
  // sequences before shorter ones start; it joins the two sources in `scratch`.
  void* state_before(int64_t s, const Tensor& initial, void* previous, Tensor& scratch) const {
    if (s == 0) return initial.data_ptr();
    const int64_t had = batch(s - 1), has = batch(s);
    if (had >= has) return previous;
    if (!scratch.defined()) scratch = at::empty_like(initial);
    const int64_t H = initial.size(1);
    scratch.narrow(0, 0, had).copy_(at::from_blob(previous, {had, H}, initial.options()));
    scratch.narrow(0, had, has - had).copy_(initial.narrow(0, had, has - had));
    return scratch.data_ptr();
  }

  // After the s-th step, keeps the rows of sequences that end there ([B, H] `final`). On the
  // CPU a memcpy: the ATen copy cost a one-step call (a cell) more than its gate math.
  void keep_final(int64_t s, void* rows, Tensor& final) const {
    const int64_t has = batch(s), next = s + 1 < steps.T ? batch(s + 1) : 0;
    if (next >= has) return;
    const int64_t row_bytes = final.size(1) * final.element_size();
    if (final.is_cpu()) {
      std::memcpy(static_cast<char*>(final.data_ptr()) + next * row_bytes,
                  static_cast<const char*>(rows) + next * row_bytes, (has - next) * row_bytes);
      return;
    }
    const Tensor state = at::from_blob(rows, {has, final.size(1)}, final.options());
    final.narrow(0, next, has - next).copy_(state.narrow(0, next, has - next));
  }
};

// One step of a layer's loop: the rows the product reads (null: no product this step), how many,
// where the product goes, and the pointwise step that follows.
template <typename Args> struct Step {
  const void* in;
  int64_t rows;
  void* out;
  Args args;
};

// A layer's loop over time: each step's product with the recurrent weights, out[rows, N] (+)=
// in[rows, K] W, then its pointwise kernel. W is w^T for the forward (w = w_hh [G*H, K]) and w
// itself for the gradient reaching h (w = w_hh [G*H, H], K = G*H). On the CPU, for float32 and
// float64, each thread runs both on its own units over a packed copy of w, one team of threads
// for the whole loop (kernels/recurrent_cpu.h); elsewhere, a GEMM then the step kernel (on CUDA
// a cuda::StepGemm, whose algorithm is chosen once for the loop).
class Recurrence {
 public:
  // gates: G of the product's output (the cell's for the forward, 1 for the gradient of h).
  // fusable: false where other work must run between the product and the pointwise step. A
  // single step (a cell) takes the plain GEMM: what the loop prepares once (the CPU's packed w,
  // the GPU's chosen algorithm) would cost more than the one product it serves (LSTMCell, B=1,
  // H=1024, CPU: 3.4 ms a step packed, against torch.nn's 2.1).
  Recurrence(const Pass& pass, const Tensor& w, int64_t gates, bool transposed, bool accumulate,
             bool fusable = true)
      : w_(w), transposed_(transposed), accumulate_(accumulate) {
    if (pass.steps.T == 1) return;
#ifdef FUSEDRNN_WITH_CUDA
    if (w.is_cuda()) step_gemm_ = std::make_unique<cuda::StepGemm>(w, transposed, accumulate);
#endif
    const int64_t N = transposed ? w.size(0) : w.size(1), K = transposed ? w.size(1) : w.size(0);
    if (!fusable || !w.is_cpu() || !cpu::has_fused_steps(dtype_of(w))) return;
    panels_ = cpu::panels_for(dtype_of(w), gates, N / gates, K);
    packed_ = at::empty({panels_.size()}, w.options());
    cpu::pack(dtype_of(w), panels_, w.data_ptr(), transposed, packed_.data_ptr());
  }

  // Runs the steps of `pass`: plan(s) -> Step<Args>, the s-th; done(s) once its results are in
  // place. Each may move rows between the loop's buffers, except over padded batches, whose
  // plans touch no data: there the CPU plans ahead (cpu::fused_loop's lookahead).
  template <typename Plan, typename Done>
  void loop(const Pass& pass, const Plan& plan, const Done& done) const {
    const int64_t steps = pass.steps.T, rows = pass.steps.B;
    using Args = decltype(plan(int64_t{}).args);
    if (!packed_.defined()) {
      for (int64_t s = 0; s < steps; ++s) {
        const Step<Args> step = plan(s);
        product(step.in, step.rows, step.out);
        run_step(w_, step.args);
        done(s);
      }
      return;
    }
    const cpu::PlanStep<Args> fill = [&](int64_t s, cpu::Product& product, Args& args) {
      const Step<Args> step = plan(s);
      product = fused(step.in, step.rows, step.out);
      args = step.args;
    };
    cpu::fused_loop<Args>(dtype_of(w_), panels_, steps, rows, pass.steps.uniform, fill, done);
  }

  // The backward through time: the steps of `pass` from its last to its first. Each step's
  // product first adds to `dh` what the step after it sent back, from that step's rows of
  // `d_pre` (the product's input; none before the last step), then its pointwise step writes its
  // own rows of d_pre; a last product gives the gradient of h0. plan(step, after, rows_after) ->
  // Step<Args>, where (after, rows_after) are the rows the step's product reads: passed on as
  // its `in`, or multiplied by plan itself where other work must come between (then in = null).
  template <typename Plan>
  void loop_back(const Pass& pass, const Tensor& d_pre, void* dh, const Plan& plan) const {
    const void* after = nullptr;
    int64_t rows_after = 0;
    const auto last_first = [&](int64_t s) {
      const int64_t step = pass.steps.T - 1 - s;
      const auto planned = plan(step, after, rows_after);
      after = at_row(d_pre, pass.first_row(step)), rows_after = pass.batch(step);
      return planned;
    };
    loop(pass, last_first, [](int64_t) {});
    product(after, rows_after, dh);
  }

  // The product alone (none when `in` is null).
  void product(const void* in, int64_t rows, void* out) const {
    if (!in) return;
    if (packed_.defined()) return cpu::fused_product(dtype_of(w_), fused(in, rows, out));
#ifdef FUSEDRNN_WITH_CUDA
    if (step_gemm_) return step_gemm_->run(in, rows, out);
#endif
    const int64_t N = transposed_ ? w_.size(0) : w_.size(1);
    const int64_t K = transposed_ ? w_.size(1) : w_.size(0);
    gemm(w_, Gemm{rows, N, K, in, false, w_.data_ptr(), transposed_, out, accumulate_});
  }

 private:
  cpu::Product fused(const void* in, int64_t rows, void* out) const {
    return cpu::Product{&panels_, packed_.data_ptr(), in, out, rows, accumulate_};
  }

  Tensor w_, packed_;  // packed_: defined on the fused path only
  bool transposed_, accumulate_;
  cpu::Panels panels_{};
#ifdef FUSEDRNN_WITH_CUDA
  std::unique_ptr<cuda::StepGemm> step_gemm_;  // on CUDA tensors only
#endif
};

// Sum over steps of d_pre[t]^T h_{t-1}: [G*H, H], for d_pre the gradient of h_{t-1} W_hh^T laid
// out like the output.
Tensor grad_w_hh(const Pass& pass, const Tensor& d_pre, const Tensor& h0, const Tensor& output) {
  const Layout& L = pass.steps;
  const int64_t H = h0.size(1), G_H = d_pre.size(-1);
  Tensor grad = at::empty({G_H, H}, h0.options());
  if (L.uniform) {
    // Two GEMMs: the first step processed pairs with h0, the rest with the output one step
    // earlier (forward: d_pre[1:] with output[:-1]; reverse: d_pre[:-1] with output[1:]).
    gemm(h0, Gemm{G_H, H, L.B, at_row(d_pre, pass.first_row(0)), true, h0.data_ptr(), false,
                  grad.data_ptr(), false});
    gemm(h0, Gemm{G_H, H, L.rows - L.B, at_row(d_pre, pass.reverse ? 0 : L.B), true,
                  at_row(output, pass.reverse ? L.B : 0), false, grad.data_ptr(), true});
    return grad;
  }
  // Packed: gather each row's h_{t-1} (from h0 or output) beside it, then one GEMM.
  std::vector<int64_t> source(L.rows);  // row of cat(h0, output)
  for (int64_t s = 0; s < L.T; ++s) {
    const int64_t first = pass.first_row(s), had = s ? pass.batch(s - 1) : 0;
    for (int64_t b = 0; b < pass.batch(s); ++b)
      source[first + b] = b < had ? L.B + pass.first_row(s - 1) + b : b;
  }
  const Tensor index = at::tensor(source, at::kLong).to(h0.device());
  const Tensor h_prev = at::cat({h0, output.view({-1, H})}).index_select(0, index);
  gemm(h0, Gemm{G_H, H, L.rows, d_pre.data_ptr(), true, h_prev.data_ptr(), false, grad.data_ptr(),
                false});
  return grad;
}

// grad_input = d_x W_ih and grad_w_ih = d_x^T x, for d_x the gradient of x W_ih^T laid out like
// the input.
std::tuple<Tensor, Tensor> grads_through_input(const Tensor& d_x, const Tensor& input,
                                               const Tensor& w_ih) {
  const int64_t rows = input.numel() / input.size(-1), I = input.size(-1), G_H = w_ih.size(0);
  Tensor grad_input = at::empty_like(input), grad_w_ih = at::empty_like(w_ih);
  gemm(input, Gemm{rows, I, G_H, d_x.data_ptr(), false, w_ih.data_ptr(), false,
                   grad_input.data_ptr(), false});
  gemm(input, Gemm{G_H, I, rows, d_x.data_ptr(), true, input.data_ptr(), false,
                   grad_w_ih.data_ptr(), false});
  return {grad_input, grad_w_ih};
}

Tensor bias_grad(const Tensor& d_pre, bool has_bias) {
  return has_bias ? d_pre.view({-1, d_pre.size(-1)}).sum(0) : at::empty({0}, d_pre.options());
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& input_, const Tensor& h0_, const Tensor& c0_, const Tensor& w_ih_,
    const Tensor& w_hh_, const OptionalTensor& b_ih, const OptionalTensor& b_hh, bool reverse,
    bool training, const OptionalTensor& batch_sizes, const OptionalTensor& w_hr_) {
  constexpr const char* op = "fusedrnn.lstm_forward";
  const auto s = check_layer(op, 4, input_, batch_sizes, h0_, w_ih_, w_hh_, b_ih, b_hh, w_hr_);
  const int64_t B = s.steps.B, H = s.H, P = s.P;
  check_shape(op, "c0", c0_, {B, H});
  check_like(op, "c0", c0_, input_);
  if (runs_widened(input_))
    return narrowed(lstm_forward(widened(input_), widened(h0_), widened(c0_), widened(w_ih_),
                                 widened(w_hh_), widened(b_ih), widened(b_hh), reverse, training,
                                 batch_sizes, widened(w_hr_)),
                    input_.scalar_type());
  c10::DeviceGuard guard(input_.device());
  const Tensor input = input_.contiguous(), h0 = h0_.contiguous(), c0 = c0_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  const Tensor w_hr = w_hr_ ? w_hr_->contiguous() : Tensor();
  const Pass pass{s.steps, reverse};

  // Like input, 4H wide; in training the activated gates, kept for the backward.
  Scratch scratch(input);
  Tensor gates = project_input(
      input, w_ih, b_ih, b_hh,
      training ? sequence_like(input, 4 * H) : scratch.take(sequence_sizes(input, 4 * H)));
  Tensor output = sequence_like(input, P);
  // Training keeps every c_t; inference alternates between two [B, H] buffers.
  Tensor cells = training ? sequence_like(input, H) : at::empty({2 * B, H}, input.options());
  // With a projection the cell's o * tanh(c) lands here, and h = that W_hr^T; training keeps
  // every step's for the gradient of W_hr.
  Tensor unprojected = !w_hr.defined() ? at::empty({0}, input.options())
                       : training      ? sequence_like(input, H)
                                       : at::empty({B, H}, input.options());
  Tensor hn = at::empty({B, P}, input.options()), cn = at::empty({B, H}, input.options());
  Tensor h_join, c_join;
  const Recurrence recurrence(pass, w_hh, 4, true, true, !w_hr.defined());
  void *h = nullptr, *c = nullptr, *cell_out = nullptr;  // the latest step's
  const auto plan = [&](int64_t step) {
    const int64_t rows = pass.batch(step), first = pass.first_row(step);
    void* h_prev = pass.state_before(step, h0, h, h_join);
    void* c_prev = pass.state_before(step, c0, c, c_join);
    void* g = at_row(gates, first);
    h = at_row(output, first);
    c = at_row(cells, training ? first : (step % 2) * B);
    cell_out = w_hr.defined() ? at_row(unprojected, training ? first : 0) : h;
    return Step<LSTMForwardStep>{h_prev, rows, g,
                                 {g, c_prev, c, cell_out, rows, H, training}};
  };
  const auto done = [&](int64_t step) {
    if (w_hr.defined())
      gemm(input, Gemm{pass.batch(step), P, H, cell_out, false, w_hr.data_ptr(), true, h, false});
    pass.keep_final(step, h, hn);
    pass.keep_final(step, c, cn);
  };
  recurrence.loop(pass, plan, done);
  if (!training) {
    gates = at::empty({0}, input.options());
    cells = at::empty({0}, input.options());
    unprojected = at::empty({0}, input.options());
  }
  return {output, hn, cn, gates, cells, unprojected};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const OptionalTensor& grad_output_, const OptionalTensor& grad_hn,
    const OptionalTensor& grad_cn, const Tensor& input_, const Tensor& h0_, const Tensor& c0_,
    const Tensor& w_ih_, const Tensor& w_hh_, const Tensor& output_, const Tensor& gates_,
    const Tensor& cells_, bool has_bias, bool reverse, const OptionalTensor& batch_sizes,
    const OptionalTensor& w_hr_, const OptionalTensor& unprojected_) {
  constexpr const char* op = "fusedrnn.lstm_backward";
  const auto s = check_layer(op, 4, input_, batch_sizes, h0_, w_ih_, w_hh_, std::nullopt,
                             std::nullopt, w_hr_);
  const int64_t B = s.steps.B, H = s.H, P = s.P;
  const Tensor output = saved_tensor(op, "output", output_, sequence_sizes(input_, P), input_);
  const Tensor cells = saved_tensor(op, "cells", cells_, sequence_sizes(input_, H), input_);
  const Tensor gates = saved_tensor(op, "gates", gates_, sequence_sizes(input_, 4 * H), input_);
  TORCH_CHECK(!w_hr_ || (unprojected_ && unprojected_->defined()), op,
              ": with w_hr, pass the forward's unprojected cell outputs");
  const OptionalTensor unprojected =
      w_hr_ ? OptionalTensor(saved_tensor(op, "unprojected", *unprojected_, cells.sizes(), input_))
            : std::nullopt;
  if (runs_widened(input_))
    return narrowed(lstm_backward(widened(grad_output_), widened(grad_hn), widened(grad_cn),
                                  widened(input_), widened(h0_), widened(c0_), widened(w_ih_),
                                  widened(w_hh_), widened(output), widened(gates), widened(cells),
                                  has_bias, reverse, batch_sizes, widened(w_hr_),
                                  widened(unprojected)),
                    input_.scalar_type());
  c10::DeviceGuard guard(input_.device());
  const Tensor input = input_.contiguous(), h0 = h0_.contiguous(), c0 = c0_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  const Tensor w_hr = w_hr_ ? w_hr_->contiguous() : Tensor();
  const Tensor grad_output =
      grad_or_undefined(op, "grad_output", grad_output_, output.sizes(), input);
  // Rows of sequences not yet reached keep their final-state gradient until their last step.
  Tensor dh = grad_or_zeros(op, "grad_hn", grad_hn, {B, P}, input);
  Tensor dc = grad_or_zeros(op, "grad_cn", grad_cn, {B, H}, input);
  const Pass pass{s.steps, reverse};

  // With a projection: d_h, each step's whole gradient of h_t (kept for W_hr's gradient), and
  // d_cell_out = d_h W_hr, the gradient of o * tanh(c) that the pointwise step takes.
  Tensor d_h, d_cell_out;
  if (w_hr.defined()) {
    d_h = sequence_like(input, P);
    d_cell_out = at::empty({B, H}, input.options());
  }
  Scratch scratch(input);
  Tensor d_gates = scratch.take(sequence_sizes(input, 4 * H)), c_join;
  const Recurrence recurrence(pass, w_hh, 1, false, false, !w_hr.defined());
  const auto plan = [&](int64_t step, const void* dg_after, int64_t rows_after) {
    const int64_t rows = pass.batch(step), first = pass.first_row(step);
    void* c_prev = pass.state_before(
        step, c0, step ? at_row(cells, pass.first_row(step - 1)) : nullptr, c_join);
    void *dy = at_row(grad_output, first), *d_cell = dh.data_ptr();
    if (w_hr.defined()) {  // not fused: the product, then the projection's gradient
      recurrence.product(std::exchange(dg_after, nullptr), rows_after, dh.data_ptr());
      Tensor total = at::from_blob(at_row(d_h, first), {rows, P}, input.options());
      const Tensor recurrent = dh.narrow(0, 0, rows);
      if (dy) at::add_out(total, at::from_blob(dy, {rows, P}, input.options()), recurrent);
      else total.copy_(recurrent);
      gemm(input, Gemm{rows, H, P, total.data_ptr(), false, w_hr.data_ptr(), false,
                       d_cell_out.data_ptr(), false});
      dy = nullptr, d_cell = d_cell_out.data_ptr();
    }
    return Step<LSTMBackwardStep>{dg_after, rows_after, dh.data_ptr(),
                                  {at_row(gates, first), at_row(cells, first), c_prev, dy, d_cell,
                                   dc.data_ptr(), at_row(d_gates, first), rows, H}};
  };
  recurrence.loop_back(pass, d_gates, dh.data_ptr(), plan);
  auto [grad_input, grad_w_ih] = grads_through_input(d_gates, input, w_ih);
  Tensor grad_w_hr = at::empty({0}, input.options());
  if (w_hr.defined()) {
    grad_w_hr = at::empty_like(w_hr);
    gemm(input, Gemm{P, H, s.steps.rows, d_h.data_ptr(), true, unprojected->data_ptr(), false,
                     grad_w_hr.data_ptr(), false});
  }
  return {grad_input, dh, dc, grad_w_ih, grad_w_hh(pass, d_gates, h0, output),
          bias_grad(d_gates, has_bias), grad_w_hr};
}

std::tuple<Tensor, Tensor, Tensor> gru_forward(
    const Tensor& input_, const Tensor& h0_, const Tensor& w_ih_, const Tensor& w_hh_,
    const OptionalTensor& b_ih, const OptionalTensor& b_hh_, bool reverse, bool training,
    const OptionalTensor& batch_sizes) {
  constexpr const char* op = "fusedrnn.gru_forward";
  const auto s = check_layer(op, 3, input_, batch_sizes, h0_, w_ih_, w_hh_, b_ih, b_hh_);
  const int64_t B = s.steps.B, H = s.H;
  if (runs_widened(input_))
    return narrowed(gru_forward(widened(input_), widened(h0_), widened(w_ih_), widened(w_hh_),
                                widened(b_ih), widened(b_hh_), reverse, training, batch_sizes),
                    input_.scalar_type());
  c10::DeviceGuard guard(input_.device());
  const Tensor input = input_.contiguous(), h0 = h0_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  const Tensor b_hh = b_hh_ ? b_hh_->contiguous() : Tensor();  // read by the step kernel
  const Pass pass{s.steps, reverse};

  Scratch scratch(input);
  // b_hh stays out: the step adds it to h W_hh^T, inside r * (h W_hn^T + b_hn).
  const Tensor x_gates = project_input(input, w_ih, b_ih, std::nullopt,
                                       scratch.take(sequence_sizes(input, 3 * H)));
  Tensor h_gates = at::empty({B, 3 * H}, input.options());  // h_{t-1} W_hh^T
  Tensor output = sequence_like(input, H);
  Tensor saved = training ? sequence_like(input, 4 * H) : at::empty({0}, input.options());
  Tensor hn = at::empty({B, H}, input.options()), h_join;
  const Recurrence recurrence(pass, w_hh, 3, true, false);
  void* h = nullptr;  // the latest step's
  const auto plan = [&](int64_t step) {
    const int64_t rows = pass.batch(step), first = pass.first_row(step);
    void* h_prev = pass.state_before(step, h0, h, h_join);
    h = at_row(output, first);
    return Step<GRUForwardStep>{
        h_prev, rows, h_gates.data_ptr(),
        {at_row(x_gates, first), h_gates.data_ptr(), b_hh.defined() ? b_hh.data_ptr() : nullptr,
         h_prev, h,
         training ? at_row(saved, first) : nullptr, rows, H}};
  };
  recurrence.loop(pass, plan, [&](int64_t step) { pass.keep_final(step, h, hn); });
  return {output, hn, saved};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const OptionalTensor& grad_output_, const OptionalTensor& grad_hn, const Tensor& input_,
    const Tensor& h0_, const Tensor& w_ih_, const Tensor& w_hh_, const Tensor& output_,
    const Tensor& saved_, bool has_bias, bool reverse, const OptionalTensor& batch_sizes) {
  constexpr const char* op = "fusedrnn.gru_backward";
  const auto s =
      check_layer(op, 3, input_, batch_sizes, h0_, w_ih_, w_hh_, std::nullopt, std::nullopt);
  const int64_t B = s.steps.B, H = s.H;
  const Tensor output = saved_tensor(op, "output", output_, sequence_sizes(input_, H), input_);
  const Tensor saved = saved_tensor(op, "saved", saved_, sequence_sizes(input_, 4 * H), input_);
  if (runs_widened(input_))
    return narrowed(gru_backward(widened(grad_output_), widened(grad_hn), widened(input_),
                                 widened(h0_), widened(w_ih_), widened(w_hh_), widened(output),
                                 widened(saved), has_bias, reverse, batch_sizes),
                    input_.scalar_type());
  c10::DeviceGuard guard(input_.device());
  const Tensor input = input_.contiguous(), h0 = h0_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  const Tensor grad_output =
      grad_or_undefined(op, "grad_output", grad_output_, output.sizes(), input);
  Tensor dh = grad_or_zeros(op, "grad_hn", grad_hn, {B, H}, input);
  const Pass pass{s.steps, reverse};

  Scratch scratch(input);
  Tensor d_x_gates = scratch.take(sequence_sizes(input, 3 * H));
  Tensor d_h_gates = scratch.take(sequence_sizes(input, 3 * H));
  Tensor h_join;
  // The gradient reaching h_{t-1}: z * dh, left in dh by the step, plus the path through W_hh.
  const Recurrence recurrence(pass, w_hh, 1, false, true);
  const auto plan = [&](int64_t step, const void* dhg_after, int64_t rows_after) {
    const int64_t rows = pass.batch(step), first = pass.first_row(step);
    void* h_prev = pass.state_before(
        step, h0, step ? at_row(output, pass.first_row(step - 1)) : nullptr, h_join);
    return Step<GRUBackwardStep>{dhg_after, rows_after, dh.data_ptr(),
                                 {at_row(saved, first), h_prev, at_row(grad_output, first),
                                  dh.data_ptr(), at_row(d_x_gates, first),
                                  at_row(d_h_gates, first), rows, H}};
  };
  recurrence.loop_back(pass, d_h_gates, dh.data_ptr(), plan);
  auto [grad_input, grad_w_ih] = grads_through_input(d_x_gates, input, w_ih);
  return {grad_input, dh, grad_w_ih, grad_w_hh(pass, d_h_gates, h0, output),
          bias_grad(d_x_gates, has_bias), bias_grad(d_h_gates, has_bias)};
}

std::tuple<Tensor, Tensor> rnn_forward(
    const Tensor& input_, const Tensor& h0_, const Tensor& w_ih_, const Tensor& w_hh_,
    const OptionalTensor& b_ih, const OptionalTensor& b_hh, bool relu, bool reverse,
    const OptionalTensor& batch_sizes) {
  constexpr const char* op = "fusedrnn.rnn_forward";
  const auto s = check_layer(op, 1, input_, batch_sizes, h0_, w_ih_, w_hh_, b_ih, b_hh);
  const int64_t B = s.steps.B, H = s.H;
  if (runs_widened(input_))
    return narrowed(rnn_forward(widened(input_), widened(h0_), widened(w_ih_), widened(w_hh_),
                                widened(b_ih), widened(b_hh), relu, reverse, batch_sizes),
                    input_.scalar_type());
  c10::DeviceGuard guard(input_.device());
  const Tensor input = input_.contiguous(), h0 = h0_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  const Pass pass{s.steps, reverse};

  // Each step's rows of output hold the pre-activation until the step turns them into h_t.
  Tensor output = project_input(input, w_ih, b_ih, b_hh, sequence_like(input, H));
  Tensor hn = at::empty({B, H}, input.options()), h_join;
  const Recurrence recurrence(pass, w_hh, 1, true, true);
  void* h = nullptr;  // the latest step's
  const auto plan = [&](int64_t step) {
    const int64_t rows = pass.batch(step);
    void* h_prev = pass.state_before(step, h0, h, h_join);
    h = at_row(output, pass.first_row(step));
    return Step<RNNForwardStep>{h_prev, rows, h, {h, rows, H, relu}};
  };
  recurrence.loop(pass, plan, [&](int64_t step) { pass.keep_final(step, h, hn); });
  return {output, hn};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_backward(
    const OptionalTensor& grad_output_, const OptionalTensor& grad_hn, const Tensor& input_,
    const Tensor& h0_, const Tensor& w_ih_, const Tensor& w_hh_, const Tensor& output_,
    bool has_bias, bool relu, bool reverse, const OptionalTensor& batch_sizes) {
  constexpr const char* op = "fusedrnn.rnn_backward";
  const auto s =
      check_layer(op, 1, input_, batch_sizes, h0_, w_ih_, w_hh_, std::nullopt, std::nullopt);
  const int64_t B = s.steps.B, H = s.H;
  const Tensor output = saved_tensor(op, "output", output_, sequence_sizes(input_, H), input_);
  if (runs_widened(input_))
    return narrowed(rnn_backward(widened(grad_output_), widened(grad_hn), widened(input_),
                                 widened(h0_), widened(w_ih_), widened(w_hh_), widened(output),
                                 has_bias, relu, reverse, batch_sizes),
                    input_.scalar_type());
  c10::DeviceGuard guard(input_.device());
  const Tensor input = input_.contiguous(), h0 = h0_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  const Tensor grad_output =
      grad_or_undefined(op, "grad_output", grad_output_, output.sizes(), input);
  Tensor dh = grad_or_zeros(op, "grad_hn", grad_hn, {B, H}, input);
  const Pass pass{s.steps, reverse};

  Scratch scratch(input);
  Tensor d_pre = scratch.take(sequence_sizes(input, H));
  const Recurrence recurrence(pass, w_hh, 1, false, false);  // the gradient reaching h_{t-1}
  const auto plan = [&](int64_t step, const void* dp_after, int64_t rows_after) {
    const int64_t rows = pass.batch(step), first = pass.first_row(step);
    return Step<RNNBackwardStep>{dp_after, rows_after, dh.data_ptr(),
                                 {at_row(output, first), at_row(grad_output, first),
                                  dh.data_ptr(), at_row(d_pre, first), rows, H, relu}};
  };
  recurrence.loop_back(pass, d_pre, dh.data_ptr(), plan);
  auto [grad_input, grad_w_ih] = grads_through_input(d_pre, input, w_ih);
  return {grad_input, dh, grad_w_ih, grad_w_hh(pass, d_pre, h0, output),
          bias_grad(d_pre, has_bias)};
}

// ---- both directions of a bidirectional layer ----------------------------------------------
namespace {

// Runs run(0) and run(1), a layer's two directions, side by side on the CPU where torch runs
// two threads: one thread each (their loops, GEMMs and ATen calls then run single-threaded), so
// no core idles. A direction's steps at B=16, H=128 ran only 1.6x faster on two threads than on
// one (too short to split well), so two one-thread loops side by side beat two two-thread loops
// in turn. With more threads a direction takes them all, in turn: a team cannot be split.
template <typename Run>
void both_directions(const Tensor& like, const Run& run) {
  if (like.is_cpu() && at::get_num_threads() == 2 && !at::in_parallel_region()) {
    at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
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
    const OptionalTensors& unprojected) {
  check_pair("fusedrnn.lstm_backward_pair",
             {grad_output.size(), grad_hn.size(), grad_cn.size(), h0.size(), c0.size(),
              w_ih.size(), w_hh.size(), output.size(), gates.size(), cells.size(), w_hr.size(),
              unprojected.size()});
  return pair_of(input, [&](int64_t d) {
    return lstm_backward(grad_output.get(d), grad_hn.get(d), grad_cn.get(d), input, h0[d], c0[d],
                         w_ih[d], w_hh[d], output[d], gates[d], cells[d], has_bias, d == 1,
                         batch_sizes, w_hr.get(d), unprojected.get(d));
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
                                      const OptionalTensor& batch_sizes) {
  check_pair("fusedrnn.gru_backward_pair",
             {grad_output.size(), grad_hn.size(), h0.size(), w_ih.size(), w_hh.size(),
              output.size(), saved.size()});
  return pair_of(input, [&](int64_t d) {
    return gru_backward(grad_output.get(d), grad_hn.get(d), input, h0[d], w_ih[d], w_hh[d],
                        output[d], saved[d], has_bias, d == 1, batch_sizes);
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
                                      bool has_bias, bool relu, const OptionalTensor& batch_sizes) {
  check_pair("fusedrnn.rnn_backward_pair",
             {grad_output.size(), grad_hn.size(), h0.size(), w_ih.size(), w_hh.size(),
              output.size()});
  return pair_of(input, [&](int64_t d) {
    return rnn_backward(grad_output.get(d), grad_hn.get(d), input, h0[d], w_ih[d], w_hh[d],
                        output[d], has_bias, relu, d == 1, batch_sizes);
  });
}

}  // namespace fusedrnn
