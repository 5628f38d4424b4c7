// The vector kernels compiled for AVX-512, in namespace fusedrnn::cpu::avx512 (isa.h). Entered
// only on CPUs that have it (detected_isa).
#include "target_avx512.h"

#ifdef FUSEDRNN_TARGET_AVX512

#define FUSEDRNN_ISA avx512
#define FUSEDRNN_VECTOR_REGISTERS 32
#include "vectorized_product.h"
#include "vectorized_steps.h"

#endif
