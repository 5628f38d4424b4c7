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
// exp_'s ISA-specific parts: its argument's range, n = round(x / ln2), and p * 2^n.
// x clamped to [-87.33, 88.73]: n then lies in [-126, 128], where 2^n is a normal float or, at
// 128, +inf (exp overflows past 88.72). exp below -87.33 comes out as exp(-87.33) rather than a
// subnormal or 0, which the gate functions never see: sigmoid(x) rounds to 1 past x = 87.33
// whatever exp(-x) is, and tanh takes exp(2|x|). NaN passes (min and max return their second
// operand when one is NaN).
inline Vectorized<float> clamp_exp_argument(const Vectorized<float>& x) {
  return _mm256_min_ps(_mm256_set1_ps(88.73f), _mm256_max_ps(_mm256_set1_ps(-87.33f), x));
}
// x / ln2 added to 1.5 * 2^23 + 127 rounds to a whole number whose low mantissa bits hold
// n + 127, the biased exponent of 2^n: one FMA and a shift give n and 2^n, where rounding,
// converting and scaling in two halves took eleven instructions (with tanh's sign below, the
// LSTM step's gate math 15% faster on a Zen 3).
struct PowerOfTwo {
  Vectorized<float> n, shifted;
};
constexpr float kExpShift = 12582912.f + 127.f;
inline PowerOfTwo nearest_power_of_two(const Vectorized<float>& x) {
  const Vectorized<float> shifted =
      fmadd(x, Vectorized<float>(1.44269504088896341f), Vectorized<float>(kExpShift));
  return {shifted - Vectorized<float>(kExpShift), shifted};
}
inline Vectorized<float> times_two_to(const Vectorized<float>& p, const PowerOfTwo& power) {
  return p * Vectorized<float>(_mm256_castsi256_ps(
                 _mm256_slli_epi32(_mm256_castps_si256(power.shifted), 23)));
}
#elif defined(CPU_CAPABILITY_AVX512)
inline Vectorized<float> clamp_exp_argument(const Vectorized<float>& x) {
  return _mm512_min_ps(_mm512_set1_ps(88.73f), _mm512_max_ps(_mm512_set1_ps(-104.f), x));
}
struct PowerOfTwo {
  Vectorized<float> n;
};
inline PowerOfTwo nearest_power_of_two(const Vectorized<float>& x) {
  return {(x * Vectorized<float>(1.44269504088896341f)).round()};  // to nearest
}
// scalef scales by any whole n, subnormal results and overflow included, in one rounding.
inline Vectorized<float> times_two_to(const Vectorized<float>& p, const PowerOfTwo& power) {
  return _mm512_scalef_ps(p, power.n);
}
#endif
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
// Float lanes take an exp inlined here: Sleef's is an out-of-line call, and the gate functions'
// exps were 40% of an LSTM step's time at B=16, H=128. Cody-Waite reduction to
// r = x - n ln2 in [-ln2/2, ln2/2], Cephes' expf polynomial for exp(r), then 2^n; within one ulp
// (tests/cpu/test_steps.py). Clamping x first keeps n in range.
inline Vectorized<float> exp_(const Vectorized<float>& x) {
  using V = Vectorized<float>;
  const V clamped = clamp_exp_argument(x);
  const PowerOfTwo power = nearest_power_of_two(clamped);
  V r = fmadd(power.n, V(-0.693359375f), clamped);
  r = fmadd(power.n, V(2.12194440e-4f), r);
  V p = fmadd(V(1.9875691500e-4f), r, V(1.3981999507e-3f));
  p = fmadd(p, r, V(8.3334519073e-3f));
  p = fmadd(p, r, V(4.1665795894e-2f));
  p = fmadd(p, r, V(1.6666665459e-1f));
  p = fmadd(p, r, V(5.0000001201e-1f));
  return times_two_to(fmadd(p * r, r, r) + V(1), power);
}
// Float lanes take a tanh built on one exp: Sleef's tanh costs about six of its exps, and an LSTM
// unit needs two tanh per step. Below |x| = 0.625 an odd polynomial (Cephes' tanhf
// coefficients), above it 1 - 2 / (exp(2|x|) + 1), which cancels no leading digits there, with
// x's sign; within two ulp of the exact value (tests/cpu/test_steps.py). NaN stays NaN; exp's
// overflow gives +-1.
inline Vectorized<float> tanh_(const Vectorized<float>& x) {
  using V = Vectorized<float>;
  const V a = x.abs();
  const V far = (V(1) - V(2) / (exp_(a + a) + V(1))) | (x & V(-0.f));
  const V z = x * x;
  V p = fmadd(V(-5.70498872745e-3f), z, V(2.06390887954e-2f));
  p = fmadd(p, z, V(-5.37397155531e-2f));
  p = fmadd(p, z, V(1.33314422036e-1f));
  p = fmadd(p, z, V(-3.33332819422e-1f));
  const V near = fmadd(p * z, x, x);
  return V::blendv(far, near, a < V(0.625f));
}
#endif
template <typename S> Vectorized<S> relu(const Vectorized<S>& x) {
  return clamp_min(x, Vectorized<S>(0));  // NaN stays NaN, as in torch.relu
}
template <typename S>
Vectorized<S> relu_backward(const Vectorized<S>& y, const Vectorized<S>& dy) {
  return Vectorized<S>::blendv(dy, Vectorized<S>(0), y <= Vectorized<S>(0));
}
// The same primitives for VectorizedN, N vectors as one arithmetic type, each vector through the
// functions above: element() on it runs N independent chains of gate math side by side.
template <typename S, int N> VectorizedN<S, N> operator-(const VectorizedN<S, N>& x) {
  return x.neg();
}
template <typename S, int N> VectorizedN<S, N> exp_(const VectorizedN<S, N>& x) {
  return x.unary_op([](const Vectorized<S>& v) { return exp_(v); });
}
template <typename S, int N> VectorizedN<S, N> tanh_(const VectorizedN<S, N>& x) {
  return x.unary_op([](const Vectorized<S>& v) { return tanh_(v); });
}
template <typename S, int N> VectorizedN<S, N> relu(const VectorizedN<S, N>& x) {
  return x.unary_op([](const Vectorized<S>& v) { return relu(v); });
}
template <typename S, int N>
VectorizedN<S, N> relu_backward(const VectorizedN<S, N>& y, const VectorizedN<S, N>& dy) {
  return y.binary_op(dy, [](const Vectorized<S>& a, const Vectorized<S>& b) {
    return relu_backward(a, b);
  });
}
}  // namespace CPU_CAPABILITY
}  // namespace at::vec

namespace fusedrnn {
inline namespace FUSEDRNN_ISA {

using at::vec::Vectorized;
template <typename S> using VectorPair = at::vec::VectorizedN<S, 2>;  // units_lanes

// elements.h's load and store for vector type V of scalar S: whole vectors, unaligned.
#define FUSEDRNN_VECTOR_LOAD_STORE(V, S)                                        \
  template <> inline V load<V, S>(const S* p) { return V::loadu(p); }           \
  template <> inline void store<S, V>(S * p, V x) { x.store(p); }
FUSEDRNN_VECTOR_LOAD_STORE(Vectorized<float>, float)
FUSEDRNN_VECTOR_LOAD_STORE(Vectorized<double>, double)
FUSEDRNN_VECTOR_LOAD_STORE(VectorPair<float>, float)
FUSEDRNN_VECTOR_LOAD_STORE(VectorPair<double>, double)
#undef FUSEDRNN_VECTOR_LOAD_STORE

}  // namespace FUSEDRNN_ISA

namespace cpu::FUSEDRNN_ISA {

// Two vectors of units at a time, then one: the gate math of one vector is a long dependent
// chain (an LSTM unit takes five exps), and two independent chains keep the core busier.
template <typename T, typename Args>
int64_t units_lanes(const Args& args, int64_t b, int64_t j, int64_t end) {
  using Vec = Vectorized<T>;
  using Pair = VectorPair<T>;
  for (; j + Pair::size() <= end; j += Pair::size()) element<T, Pair>(args, b, j);
  for (; j + Vec::size() <= end; j += Vec::size()) element<T, Vec>(args, b, j);
  return j;
}

template <typename T, typename Args>
int64_t rows_lanes(const Args& args, int64_t first_row, int64_t last_row, int64_t begin,
                   int64_t end) {
  int64_t left = begin;
  for (int64_t b = first_row; b < last_row; ++b) left = units_lanes<T>(args, b, begin, end);
  return left;
}

// Runs hidden units [begin, end) of rows [first_row, last_row) of a step in whole vectors, for
// float32 and float64; returns the first unit it left to the scalar loop. Rows in here rather
// than a call per row: the ISA's dispatch per row was 4% of an LSTM step at B=64 H=32.
template <typename Args>
int64_t vector_units(Dtype dtype, const Args& args, int64_t first_row, int64_t last_row,
                     int64_t begin, int64_t end) {
  switch (dtype) {
    case Dtype::kFloat32: return rows_lanes<float>(args, first_row, last_row, begin, end);
    case Dtype::kFloat64: return rows_lanes<double>(args, first_row, last_row, begin, end);
    default: return begin;
  }
}
#define FUSEDRNN_INSTANTIATE(Args) \
  template int64_t vector_units(Dtype, const Args&, int64_t, int64_t, int64_t, int64_t);
FUSEDRNN_FOR_EACH_STEP(FUSEDRNN_INSTANTIATE)
#undef FUSEDRNN_INSTANTIATE

}  // namespace cpu::FUSEDRNN_ISA
}  // namespace fusedrnn
