// The CPU per-step kernels: a loop over batch rows, split across threads; each row in SIMD
// vectors where the ISA in use has them (isa.h), the rest element by element.
#include <ATen/Parallel.h>

#include <algorithm>
#include <stdexcept>

#include "../core/elements.h"
#include "isa.h"

namespace fusedrnn {
namespace cpu {
namespace {

template <typename T, typename Args>
void units(Dtype dtype, const Args& args, int64_t first_row, int64_t last_row, int64_t begin,
           int64_t end) {
  using A = typename AccumulateType<T>::type;
  const int64_t left = vector_units(dtype, args, first_row, last_row, begin, end);
  for (int64_t b = first_row; b < last_row; ++b)
    for (int64_t j = left; j < end; ++j) element<T, A>(args, b, j);
}

// Units [begin, end) of rows [first_row, last_row).
template <typename Args>
void rows_units(Dtype dtype, const Args& args, int64_t first_row, int64_t last_row,
                int64_t begin, int64_t end) {
  switch (dtype) {
    case Dtype::kFloat32: return units<float>(dtype, args, first_row, last_row, begin, end);
    case Dtype::kFloat64: return units<double>(dtype, args, first_row, last_row, begin, end);
    case Dtype::kFloat16:
    case Dtype::kBFloat16:
      break;
  }
  throw std::invalid_argument(
      "fusedrnn: the CPU step kernels take float32 and float64 (layer/ widens half types)");
}

template <typename Args>
void dispatch(Dtype dtype, const Args& args) {
  // Enough rows per task that a thread's share outweighs waking it.
  const int64_t rows_per_task = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, args.hidden));
  at::parallel_for(0, args.batch, rows_per_task, [&](int64_t begin, int64_t end) {
    rows_units(dtype, args, begin, end, 0, args.hidden);
  });
}

}  // namespace

#define FUSEDRNN_DEFINE_STEP(Args) \
  void step(Dtype dtype, const Args& args) { dispatch(dtype, args); }
FUSEDRNN_FOR_EACH_STEP(FUSEDRNN_DEFINE_STEP)
#undef FUSEDRNN_DEFINE_STEP

template <typename Args>
void step_units(Dtype dtype, const Args& args, int64_t begin, int64_t end) {
  rows_units(dtype, args, 0, args.batch, begin, end);
}
#define FUSEDRNN_INSTANTIATE(Args) \
  template void step_units(Dtype, const Args&, int64_t, int64_t);
FUSEDRNN_FOR_EACH_STEP(FUSEDRNN_INSTANTIATE)
#undef FUSEDRNN_INSTANTIATE

}  // namespace cpu
}  // namespace fusedrnn
