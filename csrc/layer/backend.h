// Which backend runs a call's loop over time, and why each other one refused it.
//
//   cpu-fused  the fused CPU recurrence (cpu/recurrence.h): each thread's product with the
//              recurrent weights and its pointwise step in one pass, one team for the loop
//   step       any device: each step a GEMM (cuBLASLt on CUDA, the CPU BLAS) then a pointwise
//              kernel (cpu/steps.cpp, cuda/steps.cu)
//
// The forward and the backward op of a call each choose, from the same facts, so they agree;
// every backend saves the same tensors in the same layouts, so any forward pairs with any
// backward. A backend can be forced (fusedrnn.backends): a call it refuses then raises with
// its reason, never runs elsewhere.
#pragma once

#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace fusedrnn {

enum class Backend { kCpuFused, kStep };  // in order of preference

const char* name_of(Backend backend);
std::optional<Backend> backend_named(const std::string& name);
std::vector<Backend> all_backends();

// What the choice depends on.
struct CallShape {
  c10::DeviceType device;
  at::ScalarType dtype;
  int64_t steps;     // T
  bool projection;   // an LSTM with proj_size
};

// Why `backend` cannot run the call, or nothing if it can.
std::optional<std::string> refusal(Backend backend, const CallShape& call);

struct BackendChoice {
  Backend backend;
  std::vector<std::pair<Backend, std::string>> refused;  // the others before it, and why
};

// The forced backend if one is (raising with its reason if it refuses the call), else the first
// that accepts it.
BackendChoice choose_backend(const CallShape& call);

// Process-wide: every call from now on runs on `backend` (nothing: the choice above).
void force_backend(std::optional<Backend> backend);
std::optional<Backend> forced_backend();

}  // namespace fusedrnn
