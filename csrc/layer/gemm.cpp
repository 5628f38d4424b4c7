#include "gemm.h"

#include "../cpu/isa.h"
#include "../cpu/recurrence.h"
#include "prepare.h"

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/tensor.h>
#include <ATen/Config.h>
#include <ATen/Parallel.h>

#include <algorithm>
#ifdef FUSEDRNN_WITH_CUDA
#include <ATen/cuda/CUDAContextLight.h>
#include <cublas_v2.h>
#endif

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

using at::Tensor;

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
// which also keeps torch.nn's RNNs off it. Not for a single row either: torch 2.14.1's oneDNN
// matmul corrupted the heap there (h W_hh^T at B=1 from H = 1449, where the scalar ISA's steps
// reach it; the vector ISAs take up to 4 rows on their own kernels). Not inside a parallel
// region, where a GEMM runs on one thread (the directions of a bidirectional layer side by
// side, the GEMMs beside a backward's loop): there MKL's was the faster, on an Ice Lake, both
// interleaved in one process: the chunks beside the LSTM's loop at T=48 B=32 H=128 took 6.5 ms
// of thread time against 7.7; bidirectional LSTM training at T=50 B=16 H=128 1.04x-1.08x,
// inference 1.07x; bidirectional GRU training at T=50 B=64 H=256 1.06x.
bool runs_on_onednn(const Tensor& like, const Gemm& g) {
  constexpr int64_t kMinWork = int64_t{1} << 23;
  return like.scalar_type() == at::kFloat && g.M > 1 && g.M * g.N * g.K >= kMinWork &&
         !at::in_parallel_region() &&
         at::globalContext().userEnabledMkldnn() && onednn_gemm_works();
}

// Products up to this many multiply-adds run in tiny_gemm: at::mm's tensor set-up costs a few
// microseconds a call, the time of thousands of scalar multiply-adds. Tiny layers (gradcheck's
// T=3, B=2, H=4) are made of nothing but such products.
constexpr int64_t kTinyWork = int64_t{1} << 12;

// C (+)= op(A) op(B) in plain loops, each element of C summed in order of k. A row of C at a
// time, each k adding a_mk times a row of B across it, so that the loop along a row of C runs on
// vectors where B is not transposed (a step's weight gradients, d^T x: at B=1 H=64 the loop
// over k innermost took 20 us a product, most of a cell's backward).
template <typename T>
void tiny_gemm(const Gemm& g) {
  const T* a = static_cast<const T*>(g.a);
  const T* b = static_cast<const T*>(g.b);
  T* c = static_cast<T*>(g.c);
  for (int64_t m = 0; m < g.M; ++m) {
    T* c_row = c + m * g.N;
    if (!g.accumulate) std::fill_n(c_row, g.N, T(0));
    for (int64_t k = 0; k < g.K; ++k) {
      const T a_mk = g.a_transposed ? a[k * g.M + m] : a[m * g.K + k];
      if (g.b_transposed) {
        for (int64_t n = 0; n < g.N; ++n) c_row[n] += a_mk * b[n * g.K + k];
      } else {
        const T* b_row = b + k * g.N;
        for (int64_t n = 0; n < g.N; ++n) c_row[n] += a_mk * b_row[n];
      }
    }
  }
}

// Whether a CPU product runs on the small-product kernels (cpu::SmallProduct) rather than the
// BLAS, which packs w on every call: at a single step, that costs more than the product. For
// in w^T, w as stored (the forward's x W_ih^T and h W_hh^T), on AVX2: up to 64 rows. Inference
// on a Zen 3, two threads, both routes interleaved in one process, BLAS time / small-product
// time: LSTMCell 1.84x at B=8 H=256, 1.85x at B=16 H=512, 1.12x at B=32 H=256, 1.42x at B=64
// H=512, 1.05x at B=64 H=128; GRUCell 1.42x-1.43x; an LSTM's T=1 call at B=5 H=64 1.85x; a
// training step 1.08x-1.10x. At 96-128 rows 0.93x-1.26x. On AVX-512, float32 up to 32 rows
// (an Intel Xeon, interleaved, BLAS time / small-product time, LSTM T=1: B=16 H=512 1.34x,
// B=24 1.20x, B=32 1.13x, B=12 H=1024 1.48x, B=32 H=256 1.11x; GRU B=16 H=512 1.40x, B=32
// 1.22x; at 48 rows 0.99x, 64 rows 0.65x-0.95x). For in w (the backward's gradients through w),
// and otherwise, up to 4 rows, where they replaced MKL's sgemv: MKL copies such a w
// contiguously. (A kernel for a step's weight gradients, d_gates^T x, was tried: MKL time / its
// time 0.90x-1.14x, not kept.)
bool on_small_product(at::ScalarType dtype, const Gemm& g) {
  constexpr int64_t kRows = 4;
  if ((dtype != at::kFloat && dtype != at::kDouble) || g.a_transposed || !cpu::has_fused_steps())
    return false;
  const bool avx2 = cpu::active_isa() == cpu::Isa::kAvx2;
  const int64_t rows_transposed = avx2 ? 64 : dtype == at::kFloat ? 32 : kRows;
  return g.M <= (g.b_transposed ? rows_transposed : kRows);
}

// Split by columns between threads where the product is large enough to repay waking them.
void small_product(const Tensor& like, const Gemm& g) {
  constexpr int64_t kColumns = 96;  // a slice's columns come in whole tiles of either kernel
  constexpr int64_t kThreadWork = int64_t{1} << 18;  // multiply-adds
  const int64_t slices = (g.N + kColumns - 1) / kColumns;
  const int64_t grain = std::max<int64_t>(1, kThreadWork / (g.M * g.K * kColumns));
  const Dtype product_dtype = dtype_of(like);
  at::parallel_for(0, slices, grain, [&](int64_t first, int64_t last) {
    cpu::small_product(product_dtype,
                       cpu::SmallProduct{g.M, g.N, g.K, g.a, g.b, g.b_transposed, g.c,
                                         g.accumulate, first * kColumns,
                                         std::min(g.N, last * kColumns)});
  });
}

}  // namespace

bool onednn_gemm_works() {
#if AT_MKLDNN_ENABLED()
  // Checked once on a 2x2 product: the function is not public API, and a torch whose version
  // refuses float32 (or reads its arguments otherwise) keeps every GEMM on at::mm. torch 2.14
  // refuses it on CPUs without AVX-512 (BW, VL, DQ).
  static const bool works = [] {
    if (at::native::mkldnn_matmul == nullptr) return false;
    try {
      const Tensor a = at::tensor({1.f, 2.f, 3.f, 4.f}).view({2, 2});
      const Tensor b = at::tensor({5.f, 6.f, 7.f, 8.f}).view({2, 2}).t();
      const Tensor c = at::ones({2, 2});
      at::native::mkldnn_matmul(a, b, c, 1.f, 1.f);
      return at::equal(c, at::mm(a, b).add(1));
    } catch (const std::exception&) {
      return false;
    }
  }();
  return works;
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
  const at::ScalarType dtype = like.scalar_type();
  if (on_small_product(dtype, g)) return small_product(like, g);
  if (g.M * g.N * g.K <= kTinyWork && (dtype == at::kFloat || dtype == at::kDouble)) {
    return dtype == at::kFloat ? tiny_gemm<float>(g) : tiny_gemm<double>(g);
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

}  // namespace fusedrnn
