#include "persistent.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#ifdef FUSEDRNN_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include "../cuda/persistent.h"
#endif

#include <cstdlib>
#include <mutex>

#include "../cpu/persistent_model.h"
#include "prepare.h"

namespace fusedrnn {
namespace {

std::mutex model_mutex;
std::optional<persistent::DeviceLimits> model_limits;

int element_bytes(at::ScalarType dtype) { return dtype == at::kDouble ? 8 : 4; }

// A barrier wait this long means a bug, not a slow step: the kernel traps. Compute-sanitizer
// slows steps a hundredfold, hence the margin; FUSEDRNN_PERSISTENT_WATCHDOG_MS overrides it.
uint64_t watchdog_ns() {
  const char* ms = std::getenv("FUSEDRNN_PERSISTENT_WATCHDOG_MS");
  return (ms ? std::strtoull(ms, nullptr, 10) : 10000ull) * 1000000ull;
}

}  // namespace

void set_persistent_model(std::optional<persistent::DeviceLimits> limits) {
  const std::lock_guard<std::mutex> lock(model_mutex);
  model_limits = limits;
}

std::optional<persistent::DeviceLimits> persistent_model() {
  const std::lock_guard<std::mutex> lock(model_mutex);
  return model_limits;
}

persistent::Plan persistent_plan(c10::Device device, const persistent::ProductShape& shape) {
  if (device.is_cpu()) {
    const auto limits = persistent_model();
    if (!limits) {
      persistent::Plan refused;
      refused.refusal = "runs on CUDA only (its CPU model is for tests: "
                        "fusedrnn.backends.persistent_model)";
      return refused;
    }
    return persistent::plan(shape, *limits);
  }
#ifdef FUSEDRNN_WITH_CUDA
  if (device.is_cuda()) {  // "cuda" without an index (fusedrnn.backends.explain_call): the current
    const int index = device.has_index() ? device.index() : c10::cuda::current_device();
    return persistent::plan(shape, cuda::device_limits(index));
  }
#endif
  persistent::Plan refused;
  refused.refusal = device.is_cuda() ? "fusedrnn was built without CUDA"
                                     : std::string("runs on CUDA only; this call is on ") +
                                           c10::DeviceTypeName(device.type(), true);
  return refused;
}

std::optional<std::string> persistent_refusal(c10::Device device, at::ScalarType dtype,
                                              int64_t gates, int64_t hidden, int64_t batch) {
  const int bytes = element_bytes(dtype);
  // The forward's product, then the backward's (the gradient of h: K = gates * H).
  for (const persistent::ProductShape& shape :
       {persistent::ProductShape{hidden, gates, hidden, batch, bytes},
        persistent::ProductShape{hidden, 1, gates * hidden, batch, bytes}}) {
    const persistent::Plan plan = persistent_plan(device, shape);
    if (!plan.refusal.empty()) return plan.refusal;
  }
  return std::nullopt;
}

namespace {

template <typename Args>
void run(const at::Tensor& w, bool transposed, bool accumulate, int64_t gates, int64_t batch,
         const std::vector<Step<Args>>& table) {
  const int64_t N = transposed ? w.size(0) : w.size(1), K = transposed ? w.size(1) : w.size(0);
  const persistent::ProductShape shape{N / gates, gates, K, batch,
                                       element_bytes(w.scalar_type())};
  const persistent::Plan plan = persistent_plan(w.device(), shape);
  TORCH_CHECK(plan.refusal.empty(), "fusedrnn: cuda-persistent: ", plan.refusal);
  persistent::LoopArgs<Args> args{table.data(), int64_t(table.size()), w.data_ptr(),
                                  transposed, accumulate, N / gates, gates, K,
                                  plan.units_per_block, plan.rows, plan.k_padded,
                                  plan.batch_chunk, nullptr, watchdog_ns()};
  if (w.is_cpu()) return cpu::persistent_model(dtype_of(w), args, plan.blocks);
#ifdef FUSEDRNN_WITH_CUDA
  const int64_t bytes = int64_t(table.size() * sizeof(Step<Args>));
  const at::Tensor host = at::empty({bytes}, at::TensorOptions(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), table.data(), size_t(bytes));
  const at::Tensor steps = host.to(w.device(), /*non_blocking=*/true);
  const at::Tensor barrier = at::zeros({1}, w.options().dtype(at::kInt));
  args.steps = static_cast<const Step<Args>*>(steps.data_ptr());
  args.barrier = static_cast<unsigned*>(barrier.data_ptr());
  try {
    cuda::persistent_loop(dtype_of(w), args, plan,
                          c10::cuda::getCurrentCUDAStream(w.device().index()).stream());
  } catch (const std::runtime_error& error) {
    TORCH_CHECK(false, error.what());
  }
#else
  TORCH_CHECK(false, "fusedrnn was built without CUDA");
#endif
}

}  // namespace

#define FUSEDRNN_DEFINE_RUN_PERSISTENT(Args)                                                   \
  void run_persistent(const at::Tensor& w, bool transposed, bool accumulate, int64_t gates,   \
                      int64_t batch, const std::vector<Step<Args>>& table) {                  \
    run(w, transposed, accumulate, gates, batch, table);                                       \
  }
FUSEDRNN_FOR_EACH_STEP(FUSEDRNN_DEFINE_RUN_PERSISTENT)
#undef FUSEDRNN_DEFINE_RUN_PERSISTENT

}  // namespace fusedrnn
