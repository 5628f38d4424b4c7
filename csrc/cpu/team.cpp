// The fused CPU recurrence's threads (recurrence.h). A loop's team of threads stays together
// from its first step to its last, meeting at a barrier between steps: an OpenMP fork and join
// per step costs more than a small step's math. Thread t takes the same panels at every step, so
// its slice of the weights stays in its core's cache, but for the few it leaves to a thread that
// finished first (StepPanels).
#include "recurrence.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>
#if defined(__linux__)
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

#include "../core/steps.h"

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

// Fused loops running now, in this process: concurrent calls share the CPUs.
std::atomic<int64_t> loops_in_flight{0};

struct InFlight {
  InFlight() { loops_in_flight.fetch_add(1, std::memory_order_relaxed); }
  ~InFlight() { loops_in_flight.fetch_sub(1, std::memory_order_relaxed); }
};

// CPUs this thread may run on (its affinity mask: taskset, a container's cpuset).
int64_t usable_cpus() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
#endif
  return std::max<int64_t>(1, std::thread::hardware_concurrency());
}

// A clock for shares of a loop's time: the time-stamp counter where there is one (12 ns a read
// on the development machine, against 33 for steady_clock), else nanoseconds.
int64_t ticks() {
#if defined(__x86_64__) || defined(__i386__)
  return static_cast<int64_t>(__rdtsc());
#else
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
#endif
}

// Whether teams find their CPUs taken by work this process cannot see (other processes): a
// loop whose threads spent over a third of its time waiting at the barrier for one another
// reports it, and loops then run on one thread for a while, 10 ms at first and twice as long
// each time it is reported again in a row, up to a second; then a team tries again. There a
// team only adds a wait for a thread that is not running to every step (2 processes of 2
// threads on 2 cores: 14x slower than a thread each). The share of time waited, not how many
// waits ended asleep: where a step takes a millisecond, nearly every wait sleeps on free CPUs
// too, for the microseconds by which one thread finishes first, and the team is still nearly
// twice as fast (LSTM T=100 B=64 H=512: sent to one thread by the count, half its calls took
// 1.6x as long).
class Contention {
 public:
  bool solo_now() const { return now_ns() < solo_until_ns_.load(std::memory_order_relaxed); }

  // rounds: barrier rounds of a loop that took `elapsed` ticks on `threads` threads, which
  // waited for one another `waited` ticks in all.
  void report(int64_t rounds, int64_t threads, int64_t elapsed, int64_t waited) {
    if (rounds < kMinRounds) return;
    if (3 * waited <= threads * elapsed) {
      backoff_ns_.store(kMinBackoffNs, std::memory_order_relaxed);
      return;
    }
    const int64_t backoff = backoff_ns_.load(std::memory_order_relaxed);
    solo_until_ns_.store(now_ns() + backoff, std::memory_order_relaxed);
    backoff_ns_.store(std::min(2 * backoff, kMaxBackoffNs), std::memory_order_relaxed);
  }

 private:
  static int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  static constexpr int64_t kMinRounds = 16;  // fewer say little
  static constexpr int64_t kMinBackoffNs = 10'000'000, kMaxBackoffNs = 1'000'000'000;
  std::atomic<int64_t> solo_until_ns_{0}, backoff_ns_{kMinBackoffNs};
};
Contention contention;

// The team for a loop: no more threads than its work pays for, than torch's thread count, than
// the CPUs it may run on, or than its share of them beside the other loops in flight; one while
// other processes hold the CPUs (Contention). A team with more threads than free CPUs makes
// each step wait for a thread that is not running.
int64_t threads_for(const Panels& panels, int64_t rows, int64_t steps) {
  if (at::in_parallel_region()) return 1;  // nested teams run serially (both_directions)
  const int64_t work = std::max<int64_t>(1, rows) * panels.depth * panels.gates * panels.hidden;
  if (work * steps < kWorkPerTeam) return 1;
  const int64_t wanted = std::min<int64_t>(
      {work / kWorkPerThread, int64_t{at::get_num_threads()}, panels.count});
  if (wanted <= 1 || contention.solo_now()) return 1;
  const int64_t sharing = std::max<int64_t>(1, loops_in_flight.load(std::memory_order_relaxed));
  return std::clamp<int64_t>(usable_cpus() / sharing, 1, wanted);
}

#if defined(__linux__)
void futex_wait(std::atomic<uint32_t>& word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, expected, nullptr,
          nullptr, 0);
}
void futex_wake_all(std::atomic<uint32_t>& word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
          nullptr, 0);
}
#else
void futex_wait(std::atomic<uint32_t>&, uint32_t) { std::this_thread::yield(); }
void futex_wake_all(std::atomic<uint32_t>&) {}
#endif

// How long a waiter spins before it sleeps, in pause instructions (tens of cycles each), shared
// by every team: a wait that ended asleep halves it, one that ended spinning doubles it. On free
// cores the steps' imbalance is short and waits end spinning; where threads outnumber free CPUs
// (other processes, concurrent calls) spinning only delays the thread waited for, and the spin
// falls to its floor within a few steps.
constexpr int32_t kMinSpins = 32, kMaxSpins = 8192;
std::atomic<int32_t> spin_limit{kMaxSpins};

// Waits until every thread of the team has arrived: spins briefly, then sleeps on a futex until
// the last arrival wakes it. A thread that runs the slices of several team members (where OpenMP
// gave the loop fewer threads than asked for) arrives for all of them at once, so the barrier
// never waits for a thread that does not exist.
class TeamBarrier {
 public:
  explicit TeamBarrier(int64_t members) : members_(members) {}

  void arrive_and_wait(int64_t count) {
    const uint32_t round = round_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(count, std::memory_order_acq_rel) + count == members_) {
      arrived_.store(0, std::memory_order_relaxed);
      round_.fetch_add(1, std::memory_order_seq_cst);
      // Sequentially consistent with the sleeper's count-then-check: either it sees the new
      // round and does not sleep, or this sees it counted and wakes it.
      if (sleepers_.load(std::memory_order_seq_cst) > 0) futex_wake_all(round_);
      return;
    }
    const int32_t limit = spin_limit.load(std::memory_order_relaxed);
    const int64_t since = ticks();
    for (int32_t spins = 0; spins < limit; ++spins) {
      if (round_.load(std::memory_order_acquire) != round) {
        if (limit < kMaxSpins) spin_limit.store(limit * 2, std::memory_order_relaxed);
        waited_.fetch_add(ticks() - since, std::memory_order_relaxed);
        return;
      }
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();  // leaves the core to a hyperthread sibling while it waits
#endif
    }
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    while (round_.load(std::memory_order_seq_cst) == round) futex_wait(round_, round);
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
    waited_.fetch_add(ticks() - since, std::memory_order_relaxed);
    if (limit > kMinSpins) spin_limit.store(limit / 2, std::memory_order_relaxed);
  }

  int64_t rounds() const { return round_.load(std::memory_order_relaxed); }  // completed
  int64_t waited() const { return waited_.load(std::memory_order_relaxed); }  // ticks, all waits

 private:
  // On cache lines of their own: the waiting threads poll round_ while arrivals change arrived_.
  const int64_t members_;
  alignas(64) std::atomic<int64_t> arrived_{0};
  alignas(64) std::atomic<uint32_t> round_{0};
  std::atomic<int32_t> sleepers_{0};
  std::atomic<int64_t> waited_{0};
};

// Thread t of `threads` takes panels [first_panel(t), first_panel(t + 1)), the same ones at every
// step and in every product of a loop, so that they stay in its core's cache.
int64_t first_panel(const Panels& panels, int64_t t, int64_t threads) {
  return panels.count * t / threads;
}

// Runs the product and the pointwise step of panels [begin, end).
template <typename Args>
void run_panels(Dtype dtype, const Product& product, const Args& args, int64_t begin,
                int64_t end) {
  const Panels& panels = *product.panels;
  if (product.in || product.input) product_panels(dtype, product, begin, end);
  step_units(dtype, args, begin * panels.units(), std::min(panels.hidden, end * panels.units()));
}

// A panel's multiply-adds from which a team's threads share out a step's panels as they go
// (StepPanels) rather than each running its own: a claim costs a compare-and-swap, tens of
// nanoseconds, against a panel's microsecond or more from this size on.
constexpr int64_t kShareWork = 1 << 15;
// Panels per thread from which they share them out.
constexpr int64_t kSharePanels = 4;
std::atomic<bool> panel_sharing{true};
std::atomic<uint64_t> next_step_id{1};  // Product::step_id, over every loop of the process
std::atomic<int64_t> taken_over{0};  // panels run by a thread other than their slice's

// A step's panels, each member's slice (first_panel) as a range of its own: the member takes
// its panels from the front, and a member done with its own slice takes the others' from the
// back. Where one thread runs slower (the planner's serial work, a vCPU the host gives less
// time), the other finishes its panels instead of waiting for it at the barrier: a team of two
// waited at the barrier through 10-16% of each thread's time in the LSTM's inference at T=48
// B=32 H=128 and T=100 B=64 H=512. Members mostly run their own slice, so its weights stay in
// their cores' caches, and each panel's results are the same whichever thread computes them.
class StepPanels {
 public:
  explicit StepPanels(int64_t members) : slices_(members) {}

  // Gives every member its slice again, for a new step: between the barriers around the steps
  // that use it.
  void reset(const Panels& panels) {
    const int64_t members = static_cast<int64_t>(slices_.size());
    for (int64_t t = 0; t < members; ++t) {
      slices_[t].range.store(range(first_panel(panels, t, members),
                                   first_panel(panels, t + 1, members)),
                             std::memory_order_relaxed);
    }
  }

  // Runs member t's panels, two at a time (the gate math runs two vectors of units side by
  // side), then any left in the others' slices, one at a time.
  template <typename Run>
  void run(int64_t t, const Run& run_panels) {
    for (Claim c; (c = claim_front(t, 2)).count > 0;) run_panels(c.first, c.first + c.count);
    const int64_t members = static_cast<int64_t>(slices_.size());
    for (int64_t i = 1; i < members; ++i)
      for (int64_t p; (p = claim_back((t + i) % members)) >= 0;) {
        taken_over.fetch_add(1, std::memory_order_relaxed);
        run_panels(p, p + 1);
      }
  }

 private:
  struct Claim {
    int64_t first = 0, count = 0;
  };

  // [begin, end) in one word, so that the front and the back are claimed atomically together.
  static uint64_t range(int64_t begin, int64_t end) {
    return static_cast<uint64_t>(begin) << 32 | static_cast<uint64_t>(end);
  }
  static int64_t begin_of(uint64_t word) { return static_cast<int64_t>(word >> 32); }
  static int64_t end_of(uint64_t word) { return static_cast<int64_t>(word & 0xffffffffu); }

  // -> up to `most` panels from the front of slice t, now claimed (none when none is left).
  Claim claim_front(int64_t t, int64_t most) {
    std::atomic<uint64_t>& word = slices_[t].range;
    uint64_t left = word.load(std::memory_order_relaxed);
    for (;;) {
      const int64_t begin = begin_of(left), count = std::min(most, end_of(left) - begin);
      if (count <= 0) return {};
      if (word.compare_exchange_weak(left, range(begin + count, end_of(left)),
                                     std::memory_order_relaxed))
        return {begin, count};
    }
  }

  // -> the last panel left in slice t, now claimed; -1 when none is left.
  int64_t claim_back(int64_t t) {
    std::atomic<uint64_t>& word = slices_[t].range;
    uint64_t left = word.load(std::memory_order_relaxed);
    for (;;) {
      const int64_t begin = begin_of(left), end = end_of(left);
      if (begin >= end) return -1;
      if (word.compare_exchange_weak(left, range(begin, end - 1), std::memory_order_relaxed))
        return end - 1;
    }
  }

  struct alignas(64) Slice {  // a line each: a member claims its own without sharing it
    std::atomic<uint64_t> range{0};
  };
  std::vector<Slice> slices_;
};

}  // namespace

template <typename Args>
void fused_loop(Dtype dtype, const Panels& panels, int64_t steps, int64_t rows, bool lookahead,
                const PlanStep<Args>& plan, const StepDone& done) {
  if (steps == 0) return;
  const InFlight in_flight;
  const int64_t threads = threads_for(panels, rows, steps);
  const int64_t started = ticks();
  // The steps in flight, written by the planner: slot 0 alone, or step s in slot s % 2 when
  // the planner fills the next step's slot while the team computes this one.
  Product products[2]{};
  Args args[2]{};
  const bool sharing = threads > 1 && panels.count >= kSharePanels * threads &&
                       std::max<int64_t>(1, rows) * panels.depth * panels.vectors() *
                               panels.lanes >= kShareWork &&
                       panel_sharing.load(std::memory_order_relaxed);
  StepPanels step_panels[2]{StepPanels(threads), StepPanels(threads)};
  const auto fill = [&](int64_t s, int slot) {
    plan(s, products[slot], args[slot]);
    products[slot].step_id = next_step_id.fetch_add(1, std::memory_order_relaxed);
    if (sharing) step_panels[slot].reset(panels);
  };
  TeamBarrier barrier(threads);
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
      const Product& product = products[slot];
      for (int64_t t = begin; t < end; ++t) {
        if (sharing) {
          step_panels[slot].run(t, [&](int64_t first, int64_t last) {
            run_panels(dtype, product, args[slot], first, last);
          });
        } else {
          run_panels(dtype, product, args[slot], first_panel(panels, t, threads),
                     first_panel(panels, t + 1, threads));
        }
      }
    };
    const auto all_arrived = [&] {  // -> whether to go on
      barrier.arrive_and_wait(end - begin);
      return !error;
    };
    if (!lookahead) {  // plan, wait, compute, wait
      for (int64_t s = 0; s < steps; ++s) {
        if (planner) guarded([&] {
          if (s > 0) done(s - 1);
          fill(s, 0);
        });
        if (!all_arrived()) return;
        compute(0);
        barrier.arrive_and_wait(end - begin);
      }
    } else {  // one barrier a step: the planner plans step s + 1 alongside step s
      if (planner) guarded([&] { fill(0, 0); });
      if (!all_arrived()) return;
      for (int64_t s = 0; s < steps; ++s) {
        if (planner) guarded([&] {
          if (s > 0) done(s - 1);
          if (s + 1 < steps) fill(s + 1, (s + 1) % 2);
        });
        compute(s % 2);
        if (!all_arrived()) return;
      }
    }
    if (planner) guarded([&] { done(steps - 1); });
  });
  if (threads > 1)
    contention.report(barrier.rounds(), threads, ticks() - started, barrier.waited());
  if (error) std::rethrow_exception(error);
}
#define FUSEDRNN_INSTANTIATE(Args)                                                        \
  template void fused_loop(Dtype, const Panels&, int64_t, int64_t, bool, const PlanStep<Args>&, \
                           const StepDone&);
FUSEDRNN_FOR_EACH_STEP(FUSEDRNN_INSTANTIATE)
#undef FUSEDRNN_INSTANTIATE

void set_panel_sharing(bool on) { panel_sharing.store(on, std::memory_order_relaxed); }
int64_t panels_taken_over() { return taken_over.load(std::memory_order_relaxed); }

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
