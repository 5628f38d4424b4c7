// The fused CPU recurrence's threads (recurrent_cpu.h): each step splits the panels, and with
// them the hidden units, across threads; each thread runs its panels' product, then the
// pointwise step on their units. OpenMP keeps thread i on chunk i from step to step, so each
// thread's slice of the weights stays in its core's cache.
#include "recurrent_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>

#include "pointwise_cpu_vec.h"

namespace fusedrnn::cpu {
namespace {

// Multiply-adds per thread below which waking another thread costs more than it saves.
constexpr int64_t kWorkPerThread = 1 << 15;

int64_t threads_for(const Product& product) {
  const Panels& panels = *product.panels;
  const int64_t work = std::max<int64_t>(1, product.rows) * panels.depth * panels.gates *
                       panels.hidden;
  return std::clamp<int64_t>(work / kWorkPerThread, 1,
                             std::min<int64_t>(at::get_num_threads(), panels.count));
}

// Runs `slice(first_panel, end_panel)` on each thread's share of the panels.
template <typename Slice>
void split_panels(const Product& product, const Slice& slice) {
  const int64_t threads = threads_for(product), count = product.panels->count;
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) slice(count * t / threads, count * (t + 1) / threads);
  });
}

}  // namespace

bool has_fused_steps(Dtype dtype) {
  return has_vector_rows() && (dtype == Dtype::kFloat32 || dtype == Dtype::kFloat64);
}

template <typename Args>
void fused_step(Dtype dtype, const Product& product, const Args& args) {
  const int64_t units = product.panels->units(), hidden = product.panels->hidden;
  split_panels(product, [&](int64_t begin, int64_t end) {
    if (product.in) product_panels(dtype, product, begin, end);
    step_units(dtype, args, begin * units, std::min(hidden, end * units));
  });
}
template void fused_step(Dtype, const Product&, const LSTMForwardStep&);
template void fused_step(Dtype, const Product&, const LSTMBackwardStep&);
template void fused_step(Dtype, const Product&, const GRUForwardStep&);
template void fused_step(Dtype, const Product&, const GRUBackwardStep&);
template void fused_step(Dtype, const Product&, const RNNForwardStep&);
template void fused_step(Dtype, const Product&, const RNNBackwardStep&);

void fused_product(Dtype dtype, const Product& product) {
  split_panels(product, [&](int64_t begin, int64_t end) {
    product_panels(dtype, product, begin, end);
  });
}

}  // namespace fusedrnn::cpu
