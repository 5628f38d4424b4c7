// Where each step's rows live in a sequence buffer, and the order in which a direction visits
// the steps: padded batches [T, B, W] and PackedSequence data [rows, W] alike.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace fusedrnn {

using at::Tensor;
using OptionalTensor = std::optional<Tensor>;

// Step t holds batch[t] rows from row offset[t] on. Padded input is the case batch[t] = B; a
// PackedSequence's data has batch[t] = batch_sizes[t], which never grows with t.
struct Layout {
  int64_t T = 0, B = 0, rows = 0;
  std::vector<int64_t> batch, offset;
  bool uniform = true;  // every step has all B rows
};

// The layout of `input` ([T, B, I], or packed [rows, I] with `batch_sizes`), checked.
Layout layout_of(const char* op, const Tensor& input, const OptionalTensor& batch_sizes);

// Address of row r of a contiguous sequence buffer ([T, B, W] or [rows, W]), or null for an
// undefined one.
void* at_row(const Tensor& seq, int64_t r);

// The shape of a sequence buffer laid out like the input, `width` wide.
std::vector<int64_t> sequence_sizes(const Tensor& input, int64_t width);

// at::empty: on the CPU without the dispatcher's round trip, which cost a third of a one-step
// call's allocations; the same allocator and the same tensor.
Tensor fresh(at::IntArrayRef sizes, const at::TensorOptions& options);

// A sequence buffer laid out like the input, `width` wide.
Tensor sequence_like(const Tensor& input, int64_t width);

// The order in which one direction visits the steps, and where their states come from.
struct Pass {
  const Layout& steps;
  bool reverse;

  // The time index of the s-th step processed.
  int64_t time(int64_t s) const { return reverse ? steps.T - 1 - s : s; }
  int64_t batch(int64_t s) const { return steps.batch[time(s)]; }
  int64_t first_row(int64_t s) const { return steps.offset[time(s)]; }

  // The state (h or c, [B, H]) entering the s-th step: `initial` for the first, else the rows
  // that the step before left at `previous`. A reverse pass over packed sequences meets longer
  // sequences before shorter ones start; it joins the two sources in `scratch`.
  void* state_before(int64_t s, const Tensor& initial, void* previous, Tensor& scratch) const;

  // After the s-th step, keeps the rows of sequences that end there ([B, H] `final`).
  void keep_final(int64_t s, void* rows, Tensor& final) const;
};

}  // namespace fusedrnn
