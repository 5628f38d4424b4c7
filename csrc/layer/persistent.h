// The cuda-persistent backend's host side: its plans for a call (and why it refuses one), the
// switch that runs its CPU model instead on CPU tensors, and the loop itself, which
// Recurrence::loop hands its whole step table.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

#include "../core/persistent.h"

namespace fusedrnn {

// Why the persistent loop cannot run a layer of `gates` gate blocks, `hidden` units and
// `batch` rows of `dtype` on `device` (forward and backward alike), or nothing.
std::optional<std::string> persistent_refusal(c10::Device device, at::ScalarType dtype,
                                              int64_t gates, int64_t hidden, int64_t batch);

// Process-wide, for tests: CPU calls forced onto cuda-persistent run its CPU model
// (cpu/persistent_model.h) with the plan for a device of these limits; nothing: they refuse.
void set_persistent_model(std::optional<persistent::DeviceLimits> limits);
std::optional<persistent::DeviceLimits> persistent_model();

// The plan of one loop's product on `device` (the model's limits on the CPU).
persistent::Plan persistent_plan(c10::Device device, const persistent::ProductShape& shape);

// Runs `table`, every step of one loop, in one launch on w's device (the model on the CPU).
#define FUSEDRNN_DECLARE_RUN_PERSISTENT(Args)                                                  \
  void run_persistent(const at::Tensor& w, bool transposed, bool accumulate, int64_t gates,   \
                      int64_t batch, const std::vector<Step<Args>>& table);
FUSEDRNN_FOR_EACH_STEP(FUSEDRNN_DECLARE_RUN_PERSISTENT)
#undef FUSEDRNN_DECLARE_RUN_PERSISTENT

}  // namespace fusedrnn
