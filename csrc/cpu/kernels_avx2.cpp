// The vector kernels compiled for AVX2 and FMA, in namespace fusedrnn::cpu::avx2 (isa.h). Entered
// only on CPUs that have them (detected_isa).
#include "target_avx2.h"

#ifdef FUSEDRNN_TARGET_AVX2

#define FUSEDRNN_ISA avx2
#include "vectorized_product.h"
#include "vectorized_steps.h"

namespace fusedrnn::cpu::avx2 {
#define FUSEDRNN_INSTANTIATE(Args) \
  template int64_t vector_units(Dtype, const Args&, int64_t, int64_t, int64_t);
FUSEDRNN_FOR_EACH_STEP(FUSEDRNN_INSTANTIATE)
#undef FUSEDRNN_INSTANTIATE
}  // namespace fusedrnn::cpu::avx2

#endif
