// The persistent recurrence's CUDA side (core/persistent.h says what it computes): the device's
// limits for the plan, and the one cooperative launch that runs a layer's whole loop.
// Framework-free; layer/persistent.cpp allocates, plans and calls it.
#pragma once

#include "../core/persistent.h"

namespace fusedrnn {
namespace cuda {

// The limits of CUDA device `device` (cached; the CUDA runtime's attributes).
persistent::DeviceLimits device_limits(int device);

// Runs every step of `args` in one cooperative launch of plan.blocks blocks on `stream`.
// Throws std::runtime_error, before anything ran, where the device cannot keep the blocks
// resident together or refuses the launch.
#define FUSEDRNN_DECLARE_PERSISTENT_LOOP(Args)                                              \
  void persistent_loop(Dtype dtype, const persistent::LoopArgs<Args>& args,                 \
                       const persistent::Plan& plan, cudaStream_t stream);
FUSEDRNN_FOR_EACH_STEP(FUSEDRNN_DECLARE_PERSISTENT_LOOP)
#undef FUSEDRNN_DECLARE_PERSISTENT_LOOP

}  // namespace cuda
}  // namespace fusedrnn
