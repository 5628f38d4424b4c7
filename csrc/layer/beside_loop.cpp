#include "beside_loop.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#include "../cpu/isa.h"
#include "gemm.h"
#include "projections.h"

namespace fusedrnn {
namespace {

// Rows times G*H times (I + H), near the multiply-adds of the GEMMs, below which the second
// thread gains nothing: float32 training on an Ice Lake, interleaved in one process, went from
// 0.98x-1.01x below (LSTM T=16 B=16 H=16, RNN T=32 B=8 H=32) to 1.05x-1.10x above (LSTM T=20
// B=16 H=32, GRU T=16 B=16 H=48).
constexpr int64_t kMinWork = int64_t{1} << 20;

// Rows of d per chunk: enough for the BLAS to run the weight gradients' K at its rate, few
// enough that the second thread starts early and the last chunk leaves little to wait for.
constexpr int64_t kChunkRows = 128;

// acc[j] += the sum over `rows` rows of d[r, j]: summed within the chunk first, so that the
// rounding grows with the chunk's rows plus the chunks, not with the sequence's rows.
template <typename T>
void add_column_sums(const T* d, int64_t rows, int64_t width, T* acc, std::vector<T>& chunk) {
  chunk.assign(size_t(width), T(0));
  for (int64_t r = 0; r < rows; ++r, d += width) {
    for (int64_t j = 0; j < width; ++j) chunk[j] += d[j];
  }
  for (int64_t j = 0; j < width; ++j) acc[j] += chunk[j];
}

// A weight gradient summed chunk after chunk, in chunk order: one thread at a time takes its
// next chunk.
struct Chain {
  std::atomic<int64_t> next{0};
  std::atomic<bool> busy{false};
};

// The loop's steps in chunks of about kChunkRows rows, numbered in the loop's order. Chunk c
// holds the loop's steps [c * steps, (c + 1) * steps); as steps of the pass, [first, last), rows
// [row, row + rows) of the sequence buffers.
struct Chunks {
  struct Chunk {
    int64_t first, last, row, rows;
  };

  Chunks(const Pass& pass, bool last_first)
      : T(pass.steps.T), B(pass.steps.B), reverse(pass.reverse), last_first(last_first),
        steps(std::max<int64_t>(1, kChunkRows / B)), count((T + steps - 1) / steps) {}

  Chunk operator[](int64_t c) const {
    int64_t first = c * steps, last = std::min(T, first + steps);
    if (last_first) first = T - last, last = T - c * steps;
    return Chunk{first, last, (reverse ? T - last : first) * B, (last - first) * B};
  }

  const int64_t T, B;
  const bool reverse, last_first;
  const int64_t steps, count;
};

// Runs work(0) and work(1) on two threads, with the caller's thread-local state on both (as
// both_directions), or in that order on one where OpenMP gives no second.
template <typename Work>
void on_two_threads(const Work& work) {
  const at::ThreadLocalState state;
  at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard guard(state);
    for (int64_t t = begin; t < end; ++t) work(t);
  });
}

// Runs work(), and on an exception raises `failed` before passing it on (parallel_for rethrows
// it), so that the other thread stops waiting for this one.
template <typename Work>
void guarded(std::atomic<bool>& failed, const Work& work) {
  try {
    work();
  } catch (...) {
    failed.store(true);
    throw;
  }
}

// A wait for the other thread: spins, and now and then yields, as that thread may be sharing
// this CPU.
void pause(int64_t& idle) {
  if (++idle % 64 == 0) {
    std::this_thread::yield();
  } else {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
}

// Two chunks at least: with one (a single step of 128 rows or more, as a cell's call at B=256)
// nothing overlaps, and the whole call ran on one thread (LSTMCell B=256 H=128: 0.71x-0.82x
// torch.nn's speed on two threads, 1.12x-1.16x on one).
bool beside_applies(const LayerCall& call) {
  const at::ScalarType dtype = call.input.scalar_type();
  const int64_t G_H = call.w_ih.size(0), T = call.steps.T, B = call.steps.B;
  if (T * B < 2 * kChunkRows) return false;  // and so B > 0, as Chunks divides by it
  return call.input.is_cpu() && call.steps.uniform &&
         (dtype == at::kFloat || dtype == at::kDouble) &&
         (call.product_dtype == Dtype::kFloat32 || call.product_dtype == Dtype::kFloat64) &&
         at::get_num_threads() == 2 && !at::in_parallel_region() &&
         Chunks(call.pass(), false).count >= 2 && T * B * G_H * (call.I + call.H) >= kMinWork;
}

}  // namespace

bool grads_beside_loop(const LayerCall& call, bool weight_grads) {
  return weight_grads && beside_applies(call);
}

bool projection_beside_loop(const LayerCall& call) {
  const int64_t weights = call.w_hh.numel() * call.w_hh.element_size();
  // Chunks of two steps at least: a step of 128 rows or more is product enough for the loop's
  // team of two (GRU inference at I=H=128 on a Zen 3, interleaved: the projection beside the
  // loop 0.86x-0.88x of the projection first at B=128 and 256; at B=64 1.19x).
  return beside_applies(call) && call.input.scalar_type() == at::kFloat &&
         Chunks(call.pass(), false).steps >= 2 && projects_by_rows(call) &&
         4 * weights <= 3 * cpu::l2_cache_bytes();
}

void run_projection_beside_loop(const LayerCall& call,
                                const std::function<void(int64_t row, int64_t rows)>& project,
                                const std::function<void(const cpu::StepDone&)>& loop) {
  const Chunks chunks(call.pass(), false);
  // Either thread takes the next chunk, in the loop's order: the second thread one after
  // another, the loop's thread whenever the chunk its next step needs is not projected yet, so
  // that it shares a projection larger than its loop rather than wait for it (many input
  // features: an LSTM at I=1024 H=128 B=32 ran at 0.56x-0.60x torch.nn's speed, then 1.13x).
  std::atomic<int64_t> taken{0};
  const auto projected = std::make_unique<std::atomic<bool>[]>(size_t(chunks.count));  // false
  std::atomic<bool> failed{false};
  const auto project_next = [&] {  // -> whether there was a chunk left to take
    const int64_t c = taken.fetch_add(1);
    if (c >= chunks.count) return false;
    const Chunks::Chunk k = chunks[c];
    project(k.row, k.rows);
    projected[c].store(true, std::memory_order_release);
    return true;
  };
  on_two_threads([&](int64_t t) {
    if (t == 0) {
      guarded(failed, [&] {
        while (!failed.load(std::memory_order_relaxed) && project_next()) {
        }
      });
      return;
    }
    guarded(failed, [&] {
      loop([&](int64_t s) {
        int64_t idle = 0;
        while (!projected[s / chunks.steps].load(std::memory_order_acquire)) {
          TORCH_CHECK(!failed.load(std::memory_order_relaxed),
                      "fusedrnn: the input projection beside the loop failed");
          if (!project_next()) pause(idle);
        }
      });
    });
  });
}

GradsBesideLoop run_beside_loop(const LayerCall& call, const Tensor& d_x, const Tensor& d_h,
                                const Tensor& output, bool has_bias,
                                const std::function<void(const cpu::StepDone&)>& loop) {
  const Pass pass = call.pass();
  const int64_t T = call.steps.T, B = call.steps.B, I = call.I, H = call.H;
  const int64_t G_H = call.w_ih.size(0);
  const bool shared_d = d_x.is_same(d_h);
  const Tensor& input = call.input;
  GradsBesideLoop grads;
  grads.input = at::empty_like(input);
  grads.w_ih = at::empty_like(call.w_ih);
  grads.w_hh = fresh({G_H, H}, call.options());
  if (has_bias) {
    grads.bias_x = at::zeros({G_H}, call.options());
    grads.bias_h = shared_d ? grads.bias_x : at::zeros({G_H}, call.options());
  }

  const Chunks chunk(pass, true);  // in the backward's order, the last step first
  using Chunk = Chunks::Chunk;
  const int64_t chunks = chunk.count;

  const auto through_input = [&](const Chunk& k) {
    gemm(input, Gemm{k.rows, I, G_H, at_row(d_x, k.row), false, call.w_ih.data_ptr(), false,
                     at_row(grads.input, k.row), false});
  };
  const auto add_bias = [&](const Tensor& d, const Chunk& k, Tensor& bias, auto& sums) {
    using Scalar = typename std::decay_t<decltype(sums)>::value_type;
    add_column_sums(static_cast<const Scalar*>(at_row(d, k.row)), k.rows, G_H,
                    bias.data_ptr<Scalar>(), sums);
  };
  const auto add_w_ih = [&](int64_t c, auto& sums) {
    const Chunk k = chunk[c];
    gemm(input, Gemm{G_H, I, k.rows, at_row(d_x, k.row), true, at_row(input, k.row), false,
                     grads.w_ih.data_ptr(), c > 0});
    if (has_bias) add_bias(d_x, k, grads.bias_x, sums);
  };
  // Step s pairs with the state before it: h0 for the first step, else the output one step
  // earlier in the pass (a row block below in time, or above for a reverse pass).
  const auto add_w_hh = [&](int64_t c, auto& sums) {
    Chunk k = chunk[c];
    bool accumulate = c > 0;
    if (has_bias && !shared_d) add_bias(d_h, k, grads.bias_h, sums);
    if (k.first == 0) {
      const int64_t row = pass.first_row(0);
      gemm(input, Gemm{G_H, H, B, at_row(d_h, row), true, call.h0.data_ptr(), false,
                       grads.w_hh.data_ptr(), accumulate});
      accumulate = true;
      k.rows -= B;
      if (!pass.reverse) k.row += B;
    }
    if (k.rows == 0) return;
    const int64_t state_row = pass.reverse ? k.row + B : k.row - B;
    gemm(input, Gemm{G_H, H, k.rows, at_row(d_h, k.row), true, at_row(output, state_row), false,
                     grads.w_hh.data_ptr(), accumulate});
  };

  std::atomic<int64_t> steps_done{0};
  std::atomic<int64_t> next_through_input{0};
  std::atomic<bool> failed{false};
  Chain w_ih_chain, w_hh_chain;
  const auto ready_chunks = [&] {
    const int64_t done = steps_done.load(std::memory_order_acquire);
    return done == T ? chunks : done / chunk.steps;
  };
  // Takes the next unit of work whose steps are done: a chunk of either weight gradient's
  // chain, else a chunk of the input's gradient. -> whether there was one.
  const auto work_once = [&](auto& sums) {
    const int64_t ready = ready_chunks();
    bool worked = false;
    for (Chain* chain : {&w_ih_chain, &w_hh_chain}) {
      if (chain->next.load(std::memory_order_acquire) >= ready) continue;
      if (chain->busy.exchange(true, std::memory_order_acquire)) continue;
      const int64_t c = chain->next.load(std::memory_order_relaxed);
      if (c < ready) {
        if (chain == &w_ih_chain) add_w_ih(c, sums);
        else add_w_hh(c, sums);
        chain->next.store(c + 1, std::memory_order_release);
        worked = true;
      }
      chain->busy.store(false, std::memory_order_release);
    }
    int64_t c = next_through_input.load(std::memory_order_relaxed);
    if (c < ready && next_through_input.compare_exchange_strong(c, c + 1)) {
      through_input(chunk[c]);
      worked = true;
    }
    return worked;
  };
  const auto all_taken = [&] {
    return w_ih_chain.next.load(std::memory_order_acquire) == chunks &&
           w_hh_chain.next.load(std::memory_order_acquire) == chunks &&
           next_through_input.load(std::memory_order_acquire) >= chunks;
  };

  on_two_threads([&](int64_t t) {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "run_beside_loop", [&] {
      std::vector<scalar_t> sums;
      if (t == 0) {
        guarded(failed, [&] {
          loop([&](int64_t s) { steps_done.store(s + 1, std::memory_order_release); });
        });
        steps_done.store(T, std::memory_order_release);
      }
      int64_t idle = 0;
      while (!failed.load(std::memory_order_relaxed) && !all_taken()) {
        bool worked = false;
        guarded(failed, [&] { worked = work_once(sums); });
        if (worked) idle = 0;
        else pause(idle);
      }
    });
  });
  return grads;
}

}  // namespace fusedrnn
