// The product of a recurrence's step on the GPU, through cuBLASLt with the algorithm chosen once.
#pragma once

#include <ATen/core/Tensor.h>
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <memory>
#include <vector>

namespace fusedrnn {
namespace cuda {

// out[rows, N] (+)= in[rows, K] op(w), where op(w) = w^T for w [N, K] stored transposed, else
// w [K, N]: the same GEMM with the same w once a step. cublasGemmEx chooses an algorithm at every
// call, which costs the host more time (~15 us) than a small step's product takes on the GPU;
// here the descriptors and the algorithm are made once per row count and pointer alignment, and
// each step costs one cublasLtMatmul. Runs on PyTorch's stream current at construction.
class StepGemm {
 public:
  StepGemm(const at::Tensor& w, bool transposed, bool accumulate);
  ~StepGemm();
  StepGemm(const StepGemm&) = delete;
  StepGemm& operator=(const StepGemm&) = delete;

  void run(const void* in, int64_t rows, void* out);

 private:
  struct Plan;
  const Plan& plan_for(int64_t rows, int in_alignment, int out_alignment);

  at::Tensor w_, workspace_;
  bool transposed_, accumulate_;
  cublasLtHandle_t handle_;  // PyTorch's, for this thread and device
  cudaStream_t stream_;
  std::vector<std::unique_ptr<Plan>> plans_;
};

}  // namespace cuda
}  // namespace fusedrnn
