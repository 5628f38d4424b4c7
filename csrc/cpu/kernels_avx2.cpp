// The vector kernels compiled for AVX2 and FMA, in namespace fusedrnn::cpu::avx2 (isa.h). Entered
// only on CPUs that have them (detected_isa).
#include "target_avx2.h"

#ifdef FUSEDRNN_TARGET_AVX2

#define FUSEDRNN_ISA avx2
#include "vectorized_product.h"
#include "vectorized_steps.h"

namespace fusedrnn::cpu::avx2 {
template int64_t vector_units(Dtype, const LSTMForwardStep&, int64_t, int64_t, int64_t);
template int64_t vector_units(Dtype, const LSTMBackwardStep&, int64_t, int64_t, int64_t);
template int64_t vector_units(Dtype, const GRUForwardStep&, int64_t, int64_t, int64_t);
template int64_t vector_units(Dtype, const GRUBackwardStep&, int64_t, int64_t, int64_t);
template int64_t vector_units(Dtype, const RNNForwardStep&, int64_t, int64_t, int64_t);
template int64_t vector_units(Dtype, const RNNBackwardStep&, int64_t, int64_t, int64_t);
}  // namespace fusedrnn::cpu::avx2

#endif
