// Which backend runs a call's loop over time, and why each other one refused it.
//
//   cpu-fused  the fused CPU recurrence (cpu/recurrence.h): each thread's product with the
//              recurrent weights and its pointwise step in one pass, one team for the loop
//   cuda-persistent  CUDA: one cooperative launch runs the whole loop, each block holding its
//              slice of the recurrent weights on chip (core/persistent.h). Off unless forced,
//              until a GPU run has verified it.
//   step       any device: each step a GEMM (cuBLASLt on CUDA, the CPU BLAS) then a pointwise
//              kernel (cpu/steps.cpp, cuda/steps.cu)
//
// The forward and the backward op of a call each choose, from the same facts, so they agree;
// every backend saves the same tensors in the same layouts, so any forward pairs with any
// backward. A backend can be forced (fusedrnn.backends): a call it refuses then raises with
// its reason, never runs elsewhere.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace fusedrnn {

enum class Backend { kCudaPersistent, kCpuFused, kStep };  // in order of preference

const char* name_of(Backend backend);
std::optional<Backend> backend_named(const std::string& name);
std::vector<Backend> all_backends();

// What the choice depends on.
struct CallShape {
  c10::Device device;
  at::ScalarType dtype;
  int64_t steps;     // T
  bool projection;   // an LSTM with proj_size
  int64_t gates = 0, hidden = 0, batch = 0;  // 0: not known (fusedrnn.backends.explain_call)
  bool uniform = true;  // every step has every batch row (padded, or packed of equal lengths)
};

// Why `backend` cannot run the call, or nothing if it can. Unless `forced`, a backend that is
// off by default (cuda-persistent, until verified on a GPU) refuses with that reason.
std::optional<std::string> refusal(Backend backend, const CallShape& call, bool forced = false);

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
