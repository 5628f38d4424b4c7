// The fused CPU recurrence's threads (recurrent_cpu.h). A loop's team of threads stays together
// from its first step to its last, meeting at a spin barrier between steps: an OpenMP fork and
// join per step costs more than a small step's math. Thread t always takes the same panels, so
// its slice of the weights stays in its core's cache.
#include "recurrent_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <thread>

#include "pointwise_cpu_vec.h"

namespace fusedrnn::cpu {
namespace {

// Multiply-adds per thread and step below which another thread costs more than it saves. On the
// 2-core development machine a second thread paid from 16K multiply-adds a step (B=1, H=64:
// 10% faster) and cost below 9K (B=1, H=32: 16% slower).
constexpr int64_t kWorkPerThread = 1 << 13;
// Multiply-adds over the whole call below which one thread runs it, as waking the team costs more
// than it saves: there a forward of T=1, B=1, H=64 took 19 us on one thread and 33 us on two, and
// a forward and backward of that layer broke even near T=6 (one thread 9% faster at T=4, two
// threads 4-6% faster from T=8).
constexpr int64_t kWorkPerTeam = 1 << 17;

int64_t threads_for(const Panels& panels, int64_t rows, int64_t steps) {
  if (at::in_parallel_region()) return 1;  // nested teams run serially (both_directions)
  const int64_t work = std::max<int64_t>(1, rows) * panels.depth * panels.gates * panels.hidden;
  if (work * steps < kWorkPerTeam) return 1;
  return std::clamp<int64_t>(work / kWorkPerThread, 1,
                             std::min<int64_t>(at::get_num_threads(), panels.count));
}

// Waits until every thread of the team has arrived. A thread that runs the slices of several
// team members (where OpenMP gave the loop fewer threads than asked for) arrives for all of them
// at once, so the barrier never waits for a thread that does not exist.
class SpinBarrier {
 public:
  explicit SpinBarrier(int64_t members) : members_(members) {}

  void arrive_and_wait(int64_t count) {
    const int64_t round = round_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(count, std::memory_order_acq_rel) + count == members_) {
      arrived_.store(0, std::memory_order_relaxed);
      round_.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int64_t spins = 0; round_.load(std::memory_order_acquire) == round; ++spins) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();  // leaves the core to a hyperthread sibling while it waits
#endif
      if (spins > 20000) std::this_thread::yield();  // an oversubscribed machine
    }
  }

 private:
  // On cache lines of their own: the waiting threads poll round_ while arrivals change arrived_.
  const int64_t members_;
  alignas(64) std::atomic<int64_t> arrived_{0};
  alignas(64) std::atomic<int64_t> round_{0};
};

// Thread t of `threads` takes panels [first_panel(t), first_panel(t + 1)), the same ones at every
// step and in every product of a loop, so that they stay in its core's cache.
int64_t first_panel(const Panels& panels, int64_t t, int64_t threads) {
  return panels.count * t / threads;
}

// Runs the product and the pointwise step of thread t's panels, one of `threads`.
template <typename Args>
void run_slice(Dtype dtype, const Product& product, const Args& args, int64_t t,
               int64_t threads) {
  const Panels& panels = *product.panels;
  const int64_t begin = first_panel(panels, t, threads), end = first_panel(panels, t + 1, threads);
  if (product.in) product_panels(dtype, product, begin, end);
  step_units(dtype, args, begin * panels.units(), std::min(panels.hidden, end * panels.units()));
}

}  // namespace

bool has_fused_steps(Dtype dtype) {
  return has_vector_rows() && (dtype == Dtype::kFloat32 || dtype == Dtype::kFloat64);
}

template <typename Args>
void fused_loop(Dtype dtype, const Panels& panels, int64_t steps, int64_t rows, bool lookahead,
                const PlanStep<Args>& plan, const StepDone& done) {
  if (steps == 0) return;
  const int64_t threads = threads_for(panels, rows, steps);
  // The steps in flight, written by the planner: slot 0 alone, or step s in slot s % 2 when
  // the planner fills the next step's slot while the team computes this one.
  Product products[2]{};
  Args args[2]{};
  SpinBarrier barrier(threads);
  std::exception_ptr error;  // the planner's; the barrier publishes it to the others
  const auto guarded = [&](const auto& work) {
    if (error) return;
    try {
      work();
    } catch (...) {
      error = std::current_exception();
    }
  };
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    const bool planner = begin == 0;
    const auto compute = [&](int slot) {
      for (int64_t t = begin; t < end; ++t)
        run_slice(dtype, products[slot], args[slot], t, threads);
    };
    const auto all_arrived = [&] {  // -> whether to go on
      barrier.arrive_and_wait(end - begin);
      return !error;
    };
    if (!lookahead) {  // plan, wait, compute, wait
      for (int64_t s = 0; s < steps; ++s) {
        if (planner) guarded([&] {
          if (s > 0) done(s - 1);
          plan(s, products[0], args[0]);
        });
        if (!all_arrived()) return;
        compute(0);
        barrier.arrive_and_wait(end - begin);
      }
    } else {  // one barrier a step: the planner plans step s + 1 alongside step s
      if (planner) guarded([&] { plan(0, products[0], args[0]); });
      if (!all_arrived()) return;
      for (int64_t s = 0; s < steps; ++s) {
        if (planner) guarded([&] {
          if (s > 0) done(s - 1);
          if (s + 1 < steps) plan(s + 1, products[(s + 1) % 2], args[(s + 1) % 2]);
        });
        compute(s % 2);
        if (!all_arrived()) return;
      }
    }
    if (planner) guarded([&] { done(steps - 1); });
  });
  if (error) std::rethrow_exception(error);
}
template void fused_loop(Dtype, const Panels&, int64_t, int64_t, bool,
                         const PlanStep<LSTMForwardStep>&, const StepDone&);
template void fused_loop(Dtype, const Panels&, int64_t, int64_t, bool,
                         const PlanStep<LSTMBackwardStep>&, const StepDone&);
template void fused_loop(Dtype, const Panels&, int64_t, int64_t, bool,
                         const PlanStep<GRUForwardStep>&, const StepDone&);
template void fused_loop(Dtype, const Panels&, int64_t, int64_t, bool,
                         const PlanStep<GRUBackwardStep>&, const StepDone&);
template void fused_loop(Dtype, const Panels&, int64_t, int64_t, bool,
                         const PlanStep<RNNForwardStep>&, const StepDone&);
template void fused_loop(Dtype, const Panels&, int64_t, int64_t, bool,
                         const PlanStep<RNNBackwardStep>&, const StepDone&);

void fused_product(Dtype dtype, const Product& product) {
  const Panels& panels = *product.panels;
  const int64_t threads = threads_for(panels, product.rows, 1);
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      product_panels(dtype, product, first_panel(panels, t, threads),
                     first_panel(panels, t + 1, threads));
    }
  });
}

}  // namespace fusedrnn::cpu
