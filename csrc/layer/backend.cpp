#include "backend.h"

#include <c10/util/Exception.h>

#include <atomic>

#include "../cpu/isa.h"
#include "persistent.h"

namespace fusedrnn {
namespace {

constexpr int kNone = -1;
std::atomic<int> forced{kNone};

}  // namespace

const char* name_of(Backend backend) {
  switch (backend) {
    case Backend::kCudaPersistent: return "cuda-persistent";
    case Backend::kCpuFused: return "cpu-fused";
    case Backend::kStep: return "step";
  }
  return "?";
}

std::optional<Backend> backend_named(const std::string& name) {
  for (const Backend backend : all_backends())
    if (name == name_of(backend)) return backend;
  return std::nullopt;
}

std::vector<Backend> all_backends() {
  return {Backend::kCudaPersistent, Backend::kCpuFused, Backend::kStep};
}

std::optional<std::string> refusal(Backend backend, const CallShape& call, bool forced) {
  switch (backend) {
    case Backend::kCudaPersistent: {
      // The cheap refusals first, and the plan only for a call it may run: every call, on any
      // device, asks this backend first.
      if (!call.device.is_cuda() && !(call.device.is_cpu() && persistent_model()))
        return std::string("runs on CUDA only; this call is on ") +
               c10::DeviceTypeName(call.device.type(), /*lower_case=*/true);
      if (call.steps == 1)
        return std::string("a single step (T=1, a cell): one launch per step already");
      if (call.projection)
        return std::string("LSTM with proj_size: the projection's GEMM comes between one step's "
                           "product and the next");
      if (!call.uniform)
        return std::string("packed sequences of different lengths (the batch shrinks between "
                           "steps)");
      if (!forced)
        return std::string("off unless forced until a GPU run verifies it "
                           "(FUSEDRNN_BACKEND=cuda-persistent)");
      if (call.hidden > 0)
        return persistent_refusal(call.device, call.dtype, call.gates, call.hidden, call.batch);
      return std::nullopt;
    }
    case Backend::kCpuFused: {
      if (!call.device.is_cpu())
        return std::string("runs on the CPU only; this call is on ") +
               c10::DeviceTypeName(call.device.type(), /*lower_case=*/true);
      if (call.dtype != at::kFloat && call.dtype != at::kDouble && call.dtype != at::kHalf &&
          call.dtype != at::kBFloat16)
        return std::string("no kernels for ") + c10::toString(call.dtype);
      if (call.steps == 1)
        return std::string("a single step (T=1, a cell): packing w_hh for the loop costs more "
                           "than its one product");
      if (call.projection)
        return std::string("LSTM with proj_size: the projection's GEMM comes between one step's "
                           "product and the next");
      if (!cpu::has_fused_steps())
        return std::string("the CPU ISA in use is ") + cpu::name_of(cpu::active_isa()) +
               ": the fused recurrence needs AVX2 and FMA, or AVX-512";
      return std::nullopt;
    }
    case Backend::kStep:
      return std::nullopt;  // any device, dtype and shape
  }
  return std::string("unknown backend");
}

BackendChoice choose_backend(const CallShape& call) {
  BackendChoice choice{Backend::kStep, {}};
  if (const std::optional<Backend> force = forced_backend()) {
    const std::optional<std::string> why = refusal(*force, call, /*forced=*/true);
    TORCH_CHECK(!why, "fusedrnn: the backend '", name_of(*force),
                "' is forced (FUSEDRNN_BACKEND or fusedrnn.backends.force) but cannot run this "
                "call: ", *why);
    choice.backend = *force;
    return choice;
  }
  for (const Backend backend : all_backends()) {
    std::optional<std::string> why = refusal(backend, call);
    if (!why) {
      choice.backend = backend;
      return choice;
    }
    choice.refused.emplace_back(backend, std::move(*why));
  }
  TORCH_CHECK(false, "fusedrnn: no backend accepts this call");  // step accepts every call
}

void force_backend(std::optional<Backend> backend) {
  forced.store(backend ? static_cast<int>(*backend) : kNone);
}

std::optional<Backend> forced_backend() {
  const int value = forced.load();
  return value == kNone ? std::nullopt : std::optional<Backend>(static_cast<Backend>(value));
}

}  // namespace fusedrnn
