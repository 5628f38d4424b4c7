// CUDA side of the per-step kernels: one thread per (batch row, hidden unit) (units.cuh).
// No torch headers here (they cost minutes of nvcc time); layer/recurrence.h passes the stream.
#include "units.cuh"

namespace fusedrnn {
namespace cuda {

#define FUSEDRNN_DEFINE_STEP(Args)                                  \
  void step(Dtype dtype, const Args& args, cudaStream_t stream) { \
    launch_units(dtype, args, stream);                            \
  }
FUSEDRNN_FOR_EACH_STEP(FUSEDRNN_DEFINE_STEP)
#undef FUSEDRNN_DEFINE_STEP

}  // namespace cuda
}  // namespace fusedrnn
