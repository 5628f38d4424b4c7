// The CPU per-step kernels on SIMD registers, for float32 and float64 rows: the same
// element<T, A> functions as the scalar loop and the CUDA kernels, with A an at::vec::Vectorized
// type, so gates.h's math runs eight (four) lanes at a time. This file alone is compiled for
// AVX2 and FMA, and pointwise_cpu.cpp enters it only on CPUs that have them (has_vector_rows,
// defined there so that the check itself runs on any CPU).
#include "pointwise_cpu_vec.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma")
// The pragma switches code generation but, in C++, not the feature macros that sleef.h and
// ATen's vector headers test: state them, as -mavx2 -mfma would.
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include <ATen/cpu/vec/vec.h>

#include "elements.h"

namespace at::vec {
inline namespace CPU_CAPABILITY {
// gates.h's primitives for whole vectors. They live beside Vectorized so that the unqualified
// calls in gates.h find them by argument-dependent lookup.
template <typename S> Vectorized<S> exp_(const Vectorized<S>& x) { return x.exp(); }
template <typename S> Vectorized<S> tanh_(const Vectorized<S>& x) { return x.tanh(); }
template <typename S> Vectorized<S> relu(const Vectorized<S>& x) {
  return clamp_min(x, Vectorized<S>(0));  // NaN stays NaN, as in torch.relu
}
template <typename S> Vectorized<S> d_relu(const Vectorized<S>& y) {
  return Vectorized<S>::blendv(Vectorized<S>(0), Vectorized<S>(1), y > Vectorized<S>(0));
}
}  // namespace CPU_CAPABILITY
}  // namespace at::vec

namespace fusedrnn {

using at::vec::Vectorized;
template <> inline Vectorized<float> load<Vectorized<float>, float>(const float* p) {
  return Vectorized<float>::loadu(p);
}
template <> inline Vectorized<double> load<Vectorized<double>, double>(const double* p) {
  return Vectorized<double>::loadu(p);
}
template <> inline void store<float, Vectorized<float>>(float* p, Vectorized<float> x) {
  x.store(p);
}
template <> inline void store<double, Vectorized<double>>(double* p, Vectorized<double> x) {
  x.store(p);
}

namespace cpu {
namespace {

template <typename T, typename Args>
int64_t row_lanes(const Args& args, int64_t b) {
  using Vec = Vectorized<T>;
  int64_t j = 0;
  for (; j + Vec::size() <= args.hidden; j += Vec::size()) element<T, Vec>(args, b, j);
  return j;
}

template <typename Args>
int64_t any_row(Dtype dtype, const Args& args, int64_t b) {
  switch (dtype) {
    case Dtype::kFloat32: return row_lanes<float>(args, b);
    case Dtype::kFloat64: return row_lanes<double>(args, b);
    default: return 0;
  }
}

}  // namespace
}  // namespace cpu
}  // namespace fusedrnn

#else  // no vector path on this architecture or compiler: the scalar loop does every row

namespace fusedrnn::cpu {
namespace {
template <typename Args> int64_t any_row(Dtype, const Args&, int64_t) { return 0; }
}  // namespace
}  // namespace fusedrnn::cpu

#endif

namespace fusedrnn::cpu {
int64_t vector_row(Dtype d, const LSTMForwardStep& a, int64_t b) { return any_row(d, a, b); }
int64_t vector_row(Dtype d, const LSTMBackwardStep& a, int64_t b) { return any_row(d, a, b); }
int64_t vector_row(Dtype d, const GRUForwardStep& a, int64_t b) { return any_row(d, a, b); }
int64_t vector_row(Dtype d, const GRUBackwardStep& a, int64_t b) { return any_row(d, a, b); }
int64_t vector_row(Dtype d, const RNNForwardStep& a, int64_t b) { return any_row(d, a, b); }
int64_t vector_row(Dtype d, const RNNBackwardStep& a, int64_t b) { return any_row(d, a, b); }
}  // namespace fusedrnn::cpu
