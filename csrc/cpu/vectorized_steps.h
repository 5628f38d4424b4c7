// The CPU per-step kernels on SIMD registers, for float32 and float64 rows: the same
// element<T, A> functions as the scalar loop and the CUDA kernels, with A an at::vec::Vectorized
// type, so gates.h's math runs a vector of lanes at a time. Written once, compiled once per ISA:
// included only by cpu/kernels_<isa>.cpp, after that ISA's target header, with FUSEDRNN_ISA
// naming its namespace.
#pragma once

#include "../core/elements.h"

namespace at::vec {
inline namespace CPU_CAPABILITY {
// gates.h's primitives for whole vectors. They live beside Vectorized so that the unqualified
// calls in gates.h find them by argument-dependent lookup.
template <typename S> Vectorized<S> exp_(const Vectorized<S>& x) { return x.exp(); }
template <typename S> Vectorized<S> tanh_(const Vectorized<S>& x) { return x.tanh(); }
#if defined(CPU_CAPABILITY_AVX2)
// Float lanes take an exp inlined here: Sleef's is an out-of-line call, and the gate functions'
// exps were 40% of an LSTM step's time at B=16, H=128. Cody-Waite reduction to
// r = x - n ln2 in [-ln2/2, ln2/2], Cephes' expf polynomial for exp(r), and 2^n applied as two
// factors so that every n from subnormal results to overflow is exact; within one ulp
// (tests/cpu/test_steps.py). Clamping x first keeps n in range; NaN passes the clamp.
inline Vectorized<float> exp_(const Vectorized<float>& x) {
  const __m256 clamped = _mm256_min_ps(_mm256_set1_ps(88.73f),  // past log(FLT_MAX): +inf
                                       _mm256_max_ps(_mm256_set1_ps(-104.f), x));  // past 0
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(clamped, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), clamped);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.f));
  // 2^n = 2^half * 2^(n - half): n spans [-150, 128], each factor [-75, 64], both normal.
  const __m256i whole = _mm256_cvtps_epi32(n), half = _mm256_srai_epi32(whole, 1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 scale_a = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, bias), 23));
  const __m256 scale_b = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(whole, half), bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, scale_a), scale_b);
}
// Float lanes take a tanh built on one exp: Sleef's tanh costs about six of its exps, and an LSTM
// unit needs two tanh per step. Below |x| = 0.625 an odd polynomial (Cephes' tanhf
// coefficients), above it 1 - 2 / (exp(2|x|) + 1), which cancels no leading digits there; within
// two ulp of the exact value (tests/cpu/test_steps.py). NaN stays NaN; exp's overflow gives
// +-1.
inline Vectorized<float> tanh_(const Vectorized<float>& x) {
  using V = Vectorized<float>;
  const V a = x.abs();
  const V far = V(1) - V(2) / (exp_(a + a) + V(1));
  const V z = x * x;
  V p = fmadd(V(-5.70498872745e-3f), z, V(2.06390887954e-2f));
  p = fmadd(p, z, V(-5.37397155531e-2f));
  p = fmadd(p, z, V(1.33314422036e-1f));
  p = fmadd(p, z, V(-3.33332819422e-1f));
  const V near = fmadd(p * z, x, x);
  return V::blendv(V::blendv(far, -far, x < V(0)), near, a < V(0.625f));
}
#endif  // CPU_CAPABILITY_AVX2
template <typename S> Vectorized<S> relu(const Vectorized<S>& x) {
  return clamp_min(x, Vectorized<S>(0));  // NaN stays NaN, as in torch.relu
}
template <typename S>
Vectorized<S> relu_backward(const Vectorized<S>& y, const Vectorized<S>& dy) {
  return Vectorized<S>::blendv(dy, Vectorized<S>(0), y <= Vectorized<S>(0));
}
}  // namespace CPU_CAPABILITY
}  // namespace at::vec

namespace fusedrnn {
inline namespace FUSEDRNN_ISA {

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

}  // namespace FUSEDRNN_ISA

namespace cpu::FUSEDRNN_ISA {

template <typename T, typename Args>
int64_t units_lanes(const Args& args, int64_t b, int64_t j, int64_t end) {
  using Vec = Vectorized<T>;
  for (; j + Vec::size() <= end; j += Vec::size()) element<T, Vec>(args, b, j);
  return j;
}

// Runs hidden units [begin, end) of row b of a step in whole vectors, for float32 and float64;
// returns the first unit it left to the scalar loop.
template <typename Args>
int64_t vector_units(Dtype dtype, const Args& args, int64_t b, int64_t begin, int64_t end) {
  switch (dtype) {
    case Dtype::kFloat32: return units_lanes<float>(args, b, begin, end);
    case Dtype::kFloat64: return units_lanes<double>(args, b, begin, end);
    default: return begin;
  }
}

}  // namespace cpu::FUSEDRNN_ISA
}  // namespace fusedrnn
