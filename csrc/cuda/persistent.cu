// The persistent recurrence on CUDA (core/persistent.h): one block per SM, each holding its
// slice of the recurrent weights in shared memory for the whole loop; per step, the product of
// the state with that slice (CUDA cores, fp32/fp64 accumulation), the pointwise step of the
// block's own units (core/elements.h), then a grid-wide barrier. No torch headers here.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "persistent.h"

namespace fusedrnn {
namespace cuda {
namespace {

using persistent::kBatchTile;
using persistent::kRowTile;
using persistent::kThreads;
using persistent::kWarps;
using persistent::LoopArgs;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("fusedrnn: cuda-persistent: ") + what + ": " +
                             cudaGetErrorString(err));
}

// Loads of data other blocks wrote during the launch go to L2 (.cg), never through the
// non-coherent or L1 paths, which could hold a line from before the barrier.
template <typename A, typename T> __device__ A load_coherent(const T* p);
template <> __device__ float load_coherent<float, float>(const float* p) { return __ldcg(p); }
template <> __device__ double load_coherent<double, double>(const double* p) { return __ldcg(p); }
template <> __device__ float load_coherent<float, __half>(const __half* p) {
  return __half2float(__ushort_as_half(__ldcg(reinterpret_cast<const unsigned short*>(p))));
}
template <> __device__ float load_coherent<float, __nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(
      __ushort_as_bfloat16(__ldcg(reinterpret_cast<const unsigned short*>(p))));
}

__device__ unsigned long long global_time_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Every block arrives once per step; a block leaves when all have arrived. The fence before the
// arrival releases the block's stores (its threads' ones, ordered before thread 0's by the
// block barrier), the acquiring load takes in the others'. A wait past the watchdog prints who
// waited for what and traps: a bug fails the call instead of hanging the GPU.
__device__ void grid_barrier(unsigned* counter, unsigned target, unsigned long long watchdog_ns,
                             long long step) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(counter, 1u);
    const unsigned long long start = global_time_ns();
    unsigned seen;
    while ((seen = load_acquire(counter)) < target) {
      if (global_time_ns() - start > watchdog_ns) {
        printf("fusedrnn: cuda-persistent: block %d waited over %llu ms at the barrier after "
               "step %lld: %u of %u arrivals\n",
               int(blockIdx.x), watchdog_ns / 1000000ull, step, seen, target);
        __trap();
      }
    }
    __threadfence();
  }
  __syncthreads();
}

// The lane's sum of the warp tile's (lane / kBatchTile, lane % kBatchTile), with compile-time
// indices only, so that `sum` stays in registers.
template <typename A> __device__ A own_sum(const A (&sum)[kRowTile][kBatchTile], int lane) {
  A mine = A(0);
#pragma unroll
  for (int r = 0; r < kRowTile; ++r)
#pragma unroll
    for (int b = 0; b < kBatchTile; ++b)
      if (r * kBatchTile + b == lane) mine = sum[r][b];
  return mine;
}

template <typename T, typename Args>
__global__ void __launch_bounds__(kThreads, 1) loop_kernel(const LoopArgs<Args> a) {
  using A = typename AccumulateType<T>::type;
  extern __shared__ __align__(16) unsigned char shared[];
  A* const slice = reinterpret_cast<A*>(shared);         // [rows][k_padded]
  A* const state = slice + a.rows * a.k_padded;          // [batch_chunk][k_padded]
  const int block = blockIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int K = int(a.K), k_padded = a.k_padded;

  // The block's rows of W, once, zero-padded (a NaN left in a pad would poison real sums).
  for (int r = warp; r < a.rows; r += kWarps) {
    const int64_t column = persistent::column_of(a, block, r);
    for (int k = lane; k < k_padded; k += 32)
      slice[r * k_padded + k] =
          column >= 0 && k < K ? persistent::weight<T, A>(a, column, k) : A(0);
  }

  const int64_t first_unit = int64_t(block) * a.units_per_block;
  const int units_here = int(min(int64_t(a.units_per_block), a.units - first_unit));
  const int row_tiles = a.rows / kRowTile, batch_tiles = a.batch_chunk / kBatchTile;
  const int64_t width = a.gates * a.units;  // of the product's output rows
  for (int64_t s = 0; s < a.count; ++s) {
    const Step<Args> step = a.steps[s];
    if (step.in) {
      const T* in = static_cast<const T*>(step.in);
      T* out = static_cast<T*>(step.out);
      for (int b0 = 0; b0 < step.rows; b0 += a.batch_chunk) {
        const int chunk_rows = int(min(int64_t(a.batch_chunk), step.rows - b0));
        __syncthreads();  // the last chunk's tiles are done with `state`
        for (int b = warp; b < a.batch_chunk; b += kWarps)
          for (int k = lane; k < k_padded; k += 32)
            state[b * k_padded + k] = b < chunk_rows && k < K
                                          ? load_coherent<A>(in + int64_t(b0 + b) * K + k)
                                          : A(0);
        __syncthreads();
        for (int tile = warp; tile < row_tiles * batch_tiles; tile += kWarps) {
          const int r0 = tile % row_tiles * kRowTile, bt = tile / row_tiles * kBatchTile;
          A sum[kRowTile][kBatchTile];
          persistent::lane_sums(slice + r0 * k_padded, state + bt * k_padded, k_padded, lane,
                                sum);
#pragma unroll
          for (int r = 0; r < kRowTile; ++r)
#pragma unroll
            for (int b = 0; b < kBatchTile; ++b)
#pragma unroll
              for (int offset = 16; offset >= 1; offset /= 2)
                sum[r][b] += __shfl_xor_sync(0xffffffffu, sum[r][b], offset);
          const A mine = own_sum(sum, lane);
          const int r = r0 + lane / kBatchTile, b = bt + lane % kBatchTile;
          const int64_t column = persistent::column_of(a, block, r);
          if (column >= 0 && b < chunk_rows) {
            T* o = out + int64_t(b0 + b) * width + column;
            store(o, a.accumulate ? mine + load<A>(o) : mine);
          }
        }
      }
    }
    __syncthreads();  // the block's product is in place for its own pointwise step
    const int64_t elements = step.args.batch * units_here;
    for (int64_t i = threadIdx.x; i < elements; i += kThreads)
      element<T, A>(step.args, i / units_here, first_unit + i % units_here);
    if (s + 1 < a.count)
      grid_barrier(a.barrier, unsigned(s + 1) * gridDim.x, a.watchdog_ns, s);
  }
}

template <typename T, typename Args>
void launch(const LoopArgs<Args>& args, const persistent::Plan& plan, cudaStream_t stream) {
  const auto kernel = loop_kernel<T, Args>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(plan.shared_bytes)),
        "raising the kernel's shared memory limit");
  int device = 0, sms = 0, per_sm = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "SM count");
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads,
                                                      plan.shared_bytes),
        "occupancy");
  if (per_sm * sms < plan.blocks)
    throw std::runtime_error(
        "fusedrnn: cuda-persistent: the device keeps " + std::to_string(per_sm * sms) +
        " blocks of this kernel resident at once (" + std::to_string(plan.shared_bytes) +
        " bytes of shared memory each); the plan needs " + std::to_string(plan.blocks));
  LoopArgs<Args> copy = args;
  void* params[] = {&copy};
  check(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(plan.blocks),
                                    dim3(kThreads), params, size_t(plan.shared_bytes), stream),
        "cooperative launch");
}

template <typename Args>
void dispatch(Dtype dtype, const LoopArgs<Args>& args, const persistent::Plan& plan,
              cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32: return launch<float>(args, plan, stream);
    case Dtype::kFloat64: return launch<double>(args, plan, stream);
    case Dtype::kFloat16: return launch<__half>(args, plan, stream);
    case Dtype::kBFloat16: return launch<__nv_bfloat16>(args, plan, stream);
  }
}

int attribute(cudaDeviceAttr attr, int device) {
  int value = 0;
  check(cudaDeviceGetAttribute(&value, attr, device), "device attribute");
  return value;
}

}  // namespace

persistent::DeviceLimits device_limits(int device) {
  static std::mutex mutex;
  static std::vector<std::pair<int, persistent::DeviceLimits>> known;
  const std::lock_guard<std::mutex> lock(mutex);
  for (const auto& [index, limits] : known)
    if (index == device) return limits;
  persistent::DeviceLimits limits;
  limits.sms = attribute(cudaDevAttrMultiProcessorCount, device);
  limits.shared_per_block = attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  limits.shared_per_sm = attribute(cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
  limits.reserved_per_block = attribute(cudaDevAttrReservedSharedMemoryPerBlock, device);
  limits.cooperative = attribute(cudaDevAttrCooperativeLaunch, device) != 0;
  known.emplace_back(device, limits);
  return limits;
}

#define FUSEDRNN_DEFINE_PERSISTENT_LOOP(Args)                                                \
  void persistent_loop(Dtype dtype, const LoopArgs<Args>& args, const persistent::Plan& plan, \
                       cudaStream_t stream) {                                                \
    dispatch(dtype, args, plan, stream);                                                     \
  }
FUSEDRNN_FOR_EACH_STEP(FUSEDRNN_DEFINE_PERSISTENT_LOOP)
#undef FUSEDRNN_DEFINE_PERSISTENT_LOOP

}  // namespace cuda
}  // namespace fusedrnn
