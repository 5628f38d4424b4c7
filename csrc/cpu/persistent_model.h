// A CPU model of the persistent CUDA recurrence (cuda/persistent.cu): the same plan, the same
// slices of W per block, the same staged state chunks, each lane's sums in the kernel's order,
// the same butterfly across lanes and the same pointwise step, block by block and step by step.
// It runs where no GPU is, so CI checks the kernel's decomposition against torch.nn.
#pragma once

#include "../core/persistent.h"

namespace fusedrnn {
namespace cpu {

#define FUSEDRNN_DECLARE_PERSISTENT_MODEL(Args) \
  void persistent_model(Dtype dtype, const persistent::LoopArgs<Args>& args, int blocks);
FUSEDRNN_FOR_EACH_STEP(FUSEDRNN_DECLARE_PERSISTENT_MODEL)
#undef FUSEDRNN_DECLARE_PERSISTENT_MODEL

}  // namespace cpu
}  // namespace fusedrnn
