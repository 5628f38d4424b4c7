// The CPU per-step kernels on SIMD registers, for float32 and float64 rows: the same
// element<T, A> functions as the scalar loop and the CUDA kernels, with A an at::vec::Vectorized
// type, so gates.h's math runs eight (four) lanes at a time. Compiled for AVX2 and FMA
// (vec_avx2.h); pointwise_cpu.cpp enters it only on CPUs that have them (has_vector_rows,
// defined there so that the check itself runs on any CPU).
#include "vec_avx2.h"

#include "pointwise_cpu_vec.h"

#ifdef FUSEDRNN_VEC_AVX2

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
int64_t units_lanes(const Args& args, int64_t b, int64_t j, int64_t end) {
  using Vec = Vectorized<T>;
  for (; j + Vec::size() <= end; j += Vec::size()) element<T, Vec>(args, b, j);
  return j;
}

template <typename Args>
int64_t any_units(Dtype dtype, const Args& args, int64_t b, int64_t begin, int64_t end) {
  switch (dtype) {
    case Dtype::kFloat32: return units_lanes<float>(args, b, begin, end);
    case Dtype::kFloat64: return units_lanes<double>(args, b, begin, end);
    default: return begin;
  }
}

}  // namespace
}  // namespace cpu
}  // namespace fusedrnn

#else  // no vector path on this architecture or compiler: the scalar loop does every row

namespace fusedrnn::cpu {
namespace {
template <typename Args>
int64_t any_units(Dtype, const Args&, int64_t, int64_t begin, int64_t) {
  return begin;
}
}  // namespace
}  // namespace fusedrnn::cpu

#endif

namespace fusedrnn::cpu {
template <typename Args>
int64_t vector_units(Dtype dtype, const Args& args, int64_t b, int64_t begin, int64_t end) {
  return any_units(dtype, args, b, begin, end);
}
template int64_t vector_units(Dtype, const LSTMForwardStep&, int64_t, int64_t, int64_t);
template int64_t vector_units(Dtype, const LSTMBackwardStep&, int64_t, int64_t, int64_t);
template int64_t vector_units(Dtype, const GRUForwardStep&, int64_t, int64_t, int64_t);
template int64_t vector_units(Dtype, const GRUBackwardStep&, int64_t, int64_t, int64_t);
template int64_t vector_units(Dtype, const RNNForwardStep&, int64_t, int64_t, int64_t);
template int64_t vector_units(Dtype, const RNNBackwardStep&, int64_t, int64_t, int64_t);
}  // namespace fusedrnn::cpu
