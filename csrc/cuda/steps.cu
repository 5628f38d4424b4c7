// CUDA side of the per-step kernels: one thread per (batch row, hidden unit).
// No torch headers here (they cost minutes of nvcc time); layer/recurrence.h passes the stream.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "../core/elements.h"

namespace fusedrnn {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T, typename Args>
__global__ void step_kernel(const Args args) {
  using A = typename AccumulateType<T>::type;
  const int64_t n = args.batch * args.hidden;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = idx / args.hidden;
    element<T, A>(args, b, idx - b * args.hidden);
  }
}

template <typename T, typename Args>
void launch(const Args& args, cudaStream_t stream) {
  const int64_t n = args.batch * args.hidden;
  if (n == 0) return;
  const int blocks = int(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535));
  step_kernel<T><<<blocks, kThreads, 0, stream>>>(args);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("fusedrnn: CUDA kernel launch failed: ") +
                             cudaGetErrorString(err));
}

template <typename Args>
void dispatch(Dtype dtype, const Args& args, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32: return launch<float>(args, stream);
    case Dtype::kFloat64: return launch<double>(args, stream);
    case Dtype::kFloat16: return launch<__half>(args, stream);
    case Dtype::kBFloat16: return launch<__nv_bfloat16>(args, stream);
  }
}

}  // namespace

void step(Dtype dtype, const LSTMForwardStep& args, cudaStream_t stream) { dispatch(dtype, args, stream); }
void step(Dtype dtype, const LSTMBackwardStep& args, cudaStream_t stream) { dispatch(dtype, args, stream); }
void step(Dtype dtype, const GRUForwardStep& args, cudaStream_t stream) { dispatch(dtype, args, stream); }
void step(Dtype dtype, const GRUBackwardStep& args, cudaStream_t stream) { dispatch(dtype, args, stream); }
void step(Dtype dtype, const RNNForwardStep& args, cudaStream_t stream) { dispatch(dtype, args, stream); }
void step(Dtype dtype, const RNNBackwardStep& args, cudaStream_t stream) { dispatch(dtype, args, stream); }

}  // namespace cuda
}  // namespace fusedrnn
