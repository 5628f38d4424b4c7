// A pass over the units as a CUDA kernel: one thread per (batch row, hidden unit), each calling
// element<T, A>(args, b, j) of core/; the per-step kernels (steps.cu) and the double backward's
// passes (second_order.cu) are its instances. CUDA headers and core/ only, as every .cu here.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "../core/elements.h"

namespace fusedrnn {
namespace cuda {

constexpr int kUnitThreads = 256;

template <typename T, typename Args>
__global__ void units_kernel(const Args args) {
  using A = typename AccumulateType<T>::type;
  const int64_t n = args.batch * args.hidden;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = idx / args.hidden;
    element<T, A>(args, b, idx - b * args.hidden);
  }
}

template <typename T, typename Args>
void launch_units(const Args& args, cudaStream_t stream) {
  const int64_t n = args.batch * args.hidden;
  if (n == 0) return;
  const int blocks = int(std::min<int64_t>((n + kUnitThreads - 1) / kUnitThreads, 65535));
  units_kernel<T><<<blocks, kUnitThreads, 0, stream>>>(args);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("fusedrnn: CUDA kernel launch failed: ") +
                             cudaGetErrorString(err));
}

// launch_units with the storage type of `dtype`.
template <typename Args>
void launch_units(Dtype dtype, const Args& args, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32: return launch_units<float>(args, stream);
    case Dtype::kFloat64: return launch_units<double>(args, stream);
    case Dtype::kFloat16: return launch_units<__half>(args, stream);
    case Dtype::kBFloat16: return launch_units<__nv_bfloat16>(args, stream);
  }
}

}  // namespace cuda
}  // namespace fusedrnn
