// Included first by kernels_avx512.cpp: switches the rest of the file to AVX-512 (F, BW, VL and
// DQ: what ATen's AVX512 vector types use) and includes those types (in their namespace
// at::vec::AVX512). Defines FUSEDRNN_TARGET_AVX512 where this compiler and architecture allow it.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#define FUSEDRNN_TARGET_AVX512 1
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")
// As in target_avx2.h: the pragma switches code generation, not the feature macros the headers
// test.
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include <ATen/cpu/vec/vec.h>
#endif
