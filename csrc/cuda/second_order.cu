// CUDA side of the double backward's passes over the units (core/second_order_steps.h): one
// thread per (batch row, hidden unit) (units.cuh), each step's kernel launched by
// layer/second_order.cpp between its matrix products. No torch headers here, as in steps.cu.
#include "../core/second_order_steps.h"
#include "units.cuh"

namespace fusedrnn {
namespace cuda {

#define FUSEDRNN_DEFINE_SECOND_ORDER_STEP(Args)                                  \
  void second_order_step(Dtype dtype, const Args& args, cudaStream_t stream) { \
    launch_units(dtype, args, stream);                                         \
  }
FUSEDRNN_FOR_EACH_SECOND_ORDER_STEP(FUSEDRNN_DEFINE_SECOND_ORDER_STEP)
#undef FUSEDRNN_DEFINE_SECOND_ORDER_STEP

}  // namespace cuda
}  // namespace fusedrnn
