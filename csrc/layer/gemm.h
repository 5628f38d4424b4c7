// Every GEMM of an op, on raw rows of its buffers: cuBLAS on CUDA, oneDNN or the CPU BLAS
// through ATen on the CPU.
#pragma once

#include <ATen/core/Tensor.h>

namespace fusedrnn {

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

// Runs g on the device and in the dtype of `like`.
void gemm(const at::Tensor& like, const Gemm& g);

// Whether torch's oneDNN matmul runs float32 products on this CPU (large CPU GEMMs then go to
// it while torch.backends.mkldnn is on; else to at::mm).
bool onednn_gemm_works();

}  // namespace fusedrnn
