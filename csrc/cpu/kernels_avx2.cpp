// The vector kernels compiled for AVX2 and FMA, in namespace fusedrnn::cpu::avx2 (isa.h). Entered
// only on CPUs that have them (detected_isa).
#include "target_avx2.h"

#ifdef FUSEDRNN_TARGET_AVX2

#define FUSEDRNN_ISA avx2
#define FUSEDRNN_VECTOR_REGISTERS 16
#include "vectorized_product.h"
#include "vectorized_steps.h"

#endif
