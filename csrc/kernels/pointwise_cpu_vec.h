// The vector path of the CPU per-step kernels (pointwise_cpu_vec.cpp).
#pragma once

#include "pointwise.h"

namespace fusedrnn::cpu {

// Whether this CPU can run vector_units.
bool has_vector_rows();

// Runs hidden units [begin, end) of row b of a step in whole vectors, for float32 and float64;
// returns the first unit it left to the scalar loop.
template <typename Args>
int64_t vector_units(Dtype dtype, const Args& args, int64_t b, int64_t begin, int64_t end);

}  // namespace fusedrnn::cpu
