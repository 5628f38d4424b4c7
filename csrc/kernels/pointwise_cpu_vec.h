// The vector path of the CPU per-step kernels (pointwise_cpu_vec.cpp).
#pragma once

#include "pointwise.h"

namespace fusedrnn::cpu {

// Whether this CPU can run vector_row.
bool has_vector_rows();

// Runs row b of a step from hidden unit 0 on, in whole vectors, for float32 and float64;
// returns the first hidden unit it left to the scalar loop.
int64_t vector_row(Dtype dtype, const LSTMForwardStep& args, int64_t b);
int64_t vector_row(Dtype dtype, const LSTMBackwardStep& args, int64_t b);
int64_t vector_row(Dtype dtype, const GRUForwardStep& args, int64_t b);
int64_t vector_row(Dtype dtype, const GRUBackwardStep& args, int64_t b);
int64_t vector_row(Dtype dtype, const RNNForwardStep& args, int64_t b);
int64_t vector_row(Dtype dtype, const RNNBackwardStep& args, int64_t b);

}  // namespace fusedrnn::cpu
