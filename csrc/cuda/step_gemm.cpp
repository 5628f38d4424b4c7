#include "step_gemm.h"

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/cuda/CUDAContextLight.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

namespace fusedrnn {
namespace cuda {
namespace {

// Room for split-K partial sums: small-batch products split K across blocks to fill the GPU.
constexpr size_t kWorkspaceBytes = 4 << 20;

void check(cublasStatus_t status, const char* what) {
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "fusedrnn: ", what, " failed with cuBLAS status ",
              int(status));
}

// The largest power of two, at most 256, that divides the address: what cuBLASLt may assume.
int alignment_of(const void* p) {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  int alignment = 256;
  while (alignment > 1 && address % alignment) alignment /= 2;
  return alignment;
}

}  // namespace

struct StepGemm::Plan {
  int64_t rows = 0;
  int in_alignment = 0, out_alignment = 0;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t w = nullptr, in = nullptr, out = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace_bytes = 0;

  ~Plan() {
    if (out) cublasLtMatrixLayoutDestroy(out);
    if (in) cublasLtMatrixLayoutDestroy(in);
    if (w) cublasLtMatrixLayoutDestroy(w);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

StepGemm::StepGemm(const at::Tensor& w, bool transposed, bool accumulate)
    : w_(w),
      workspace_(at::empty({int64_t(kWorkspaceBytes)}, w.options().dtype(at::kByte))),
      transposed_(transposed),
      accumulate_(accumulate),
      handle_(at::cuda::getCurrentCUDABlasLtHandle()),
      stream_(c10::cuda::getCurrentCUDAStream(w.device().index()).stream()) {}

StepGemm::~StepGemm() = default;

const StepGemm::Plan& StepGemm::plan_for(int64_t rows, int in_alignment, int out_alignment) {
  for (const auto& plan : plans_)
    if (plan->rows == rows && plan->in_alignment == in_alignment &&
        plan->out_alignment == out_alignment)
      return *plan;

  cudaDataType io = CUDA_R_32F, scale = CUDA_R_32F;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  switch (w_.scalar_type()) {
    case at::kFloat:  // TF32 exactly when torch.nn's RNNs would use it (cuDNN's switch)
      if (at::globalContext().allowTF32CuDNN()) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
      break;
    case at::kDouble: io = scale = CUDA_R_64F, compute = CUBLAS_COMPUTE_64F; break;
    case at::kHalf: io = CUDA_R_16F; break;
    case at::kBFloat16: io = CUDA_R_16BF; break;
    default: TORCH_CHECK(false, "fusedrnn: no GEMM for ", w_.scalar_type());
  }
  // Column-major, as cuBLASLt sees it: out^T[N, rows] = op(w)^T[N, K] in^T[K, rows].
  const int64_t N = transposed_ ? w_.size(0) : w_.size(1);
  const int64_t K = transposed_ ? w_.size(1) : w_.size(0);
  auto plan = std::make_unique<Plan>();
  plan->rows = rows, plan->in_alignment = in_alignment, plan->out_alignment = out_alignment;
  check(cublasLtMatmulDescCreate(&plan->desc, compute, scale), "cublasLtMatmulDescCreate");
  const cublasOperation_t op_w = transposed_ ? CUBLAS_OP_T : CUBLAS_OP_N;
  check(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_w,
                                       sizeof(op_w)),
        "cublasLtMatmulDescSetAttribute");
  check(transposed_ ? cublasLtMatrixLayoutCreate(&plan->w, io, K, N, K)
                    : cublasLtMatrixLayoutCreate(&plan->w, io, N, K, N),
        "cublasLtMatrixLayoutCreate");
  check(cublasLtMatrixLayoutCreate(&plan->in, io, K, rows, K), "cublasLtMatrixLayoutCreate");
  check(cublasLtMatrixLayoutCreate(&plan->out, io, N, rows, N), "cublasLtMatrixLayoutCreate");

  cublasLtMatmulPreference_t preference = nullptr;
  check(cublasLtMatmulPreferenceCreate(&preference), "cublasLtMatmulPreferenceCreate");
  const uint64_t workspace_bytes = kWorkspaceBytes;
  // Split-K sums through the workspace only, never with atomics in `out`: results repeat bitwise.
  const uint32_t reductions = CUBLASLT_REDUCTION_SCHEME_MASK & ~CUBLASLT_REDUCTION_SCHEME_INPLACE;
  const uint32_t w_alignment = alignment_of(w_.data_ptr()), in_bytes = in_alignment,
                 out_bytes = out_alignment;
  const std::pair<cublasLtMatmulPreferenceAttributes_t, const void*> settings[] = {
      {CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes},
      {CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &reductions},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &w_alignment},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &in_bytes},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &out_bytes},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &out_bytes}};
  for (const auto& [attribute, value] : settings)
    check(cublasLtMatmulPreferenceSetAttribute(
              preference, attribute, value,
              attribute == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES ? sizeof(uint64_t)
                                                                    : sizeof(uint32_t)),
          "cublasLtMatmulPreferenceSetAttribute");
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      handle_, plan->desc, plan->w, plan->in, plan->out,
      plan->out, preference, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(preference);
  check(status, "cublasLtMatmulAlgoGetHeuristic");
  TORCH_CHECK(found > 0, "fusedrnn: cuBLASLt has no algorithm for a [", rows, ", ", K, "] x [",
              K, ", ", N, "] product of ", w_.scalar_type());
  plan->algo = result.algo;
  plan->workspace_bytes = result.workspaceSize;
  plans_.push_back(std::move(plan));
  return *plans_.back();
}

void StepGemm::run(const void* in, int64_t rows, void* out) {
  if (rows == 0) return;
  const Plan& plan = plan_for(rows, alignment_of(in), alignment_of(out));
  const float one_f = 1, beta_f = accumulate_ ? 1 : 0;
  const double one_d = 1, beta_d = accumulate_ ? 1 : 0;
  const bool is_double = w_.scalar_type() == at::kDouble;
  const void* one = is_double ? static_cast<const void*>(&one_d) : &one_f;
  const void* beta = is_double ? static_cast<const void*>(&beta_d) : &beta_f;
  check(cublasLtMatmul(handle_, plan.desc, one, w_.data_ptr(),
                       plan.w, in, plan.in, beta, out, plan.out, out, plan.out, &plan.algo,
                       workspace_.data_ptr(), plan.workspace_bytes,
                       stream_),
        "cublasLtMatmul");
}

}  // namespace cuda
}  // namespace fusedrnn
