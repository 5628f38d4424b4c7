// Included first by kernels_avx2.cpp: switches the rest of the file to AVX2 and FMA and includes
// ATen's vector types for them (in their namespace at::vec::AVX2). Defines FUSEDRNN_TARGET_AVX2
// where this compiler and architecture allow it.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#define FUSEDRNN_TARGET_AVX2 1
#pragma GCC target("avx2,fma")
// The pragma switches code generation but, in C++, not the feature macros that sleef.h and
// ATen's vector headers test: state them, as -mavx2 -mfma would.
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include <ATen/cpu/vec/vec.h>
#endif
