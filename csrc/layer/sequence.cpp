#include "sequence.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <ATen/EmptyTensor.h>

#include <cstring>

namespace fusedrnn {

Layout layout_of(const char* op, const Tensor& input, const OptionalTensor& batch_sizes) {
  Layout L;
  if (!batch_sizes) {
    TORCH_CHECK(input.dim() == 3, op, ": input must be 3-D [T, B, I], got shape ", input.sizes());
    L.T = input.size(0), L.B = input.size(1), L.rows = L.T * L.B;
    TORCH_CHECK(L.T > 0, op, ": the sequence length must be at least 1, got 0");
    L.batch.assign(L.T, L.B);
    for (int64_t t = 0; t < L.T; ++t) L.offset.push_back(t * L.B);
    return L;
  }
  const Tensor& sizes = *batch_sizes;
  TORCH_CHECK(input.dim() == 2, op, ": packed input must be 2-D [rows, I], got shape ",
              input.sizes());
  TORCH_CHECK(sizes.dim() == 1 && sizes.scalar_type() == at::kLong && sizes.is_cpu(), op,
              ": batch_sizes must be a 1-D int64 CPU tensor, as in a PackedSequence");
  TORCH_CHECK(sizes.numel() > 0, op, ": the sequence length must be at least 1, got 0");
  const Tensor counts = sizes.contiguous();
  const int64_t* batch = counts.data_ptr<int64_t>();
  L.T = counts.numel(), L.B = batch[0], L.uniform = true;
  for (int64_t t = 0; t < L.T; ++t) {
    TORCH_CHECK(batch[t] > 0 && batch[t] <= (t ? batch[t - 1] : batch[0]), op,
                ": batch_sizes must be positive and non-increasing, got ", sizes);
    L.uniform = L.uniform && batch[t] == L.B;
    L.batch.push_back(batch[t]);
    L.offset.push_back(L.rows);
    L.rows += batch[t];
  }
  TORCH_CHECK(L.rows == input.size(0), op, ": batch_sizes add up to ", L.rows,
              " rows, but input has ", input.size(0));
  return L;
}

void* at_row(const Tensor& seq, int64_t r) {
  if (!seq.defined()) return nullptr;
  return static_cast<char*>(seq.data_ptr()) + r * seq.size(-1) * seq.element_size();
}

std::vector<int64_t> sequence_sizes(const Tensor& input, int64_t width) {
  auto sizes = input.sizes().vec();
  sizes.back() = width;
  return sizes;
}

Tensor fresh(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (options.device().is_cpu()) return at::detail::empty_cpu(sizes, options);
  return at::empty(sizes, options);
}

Tensor sequence_like(const Tensor& input, int64_t width) {
  return fresh(sequence_sizes(input, width), input.options());
}

void* Pass::state_before(int64_t s, const Tensor& initial, void* previous,
                         Tensor& scratch) const {
  if (s == 0) return initial.data_ptr();
  const int64_t had = batch(s - 1), has = batch(s);
  if (had >= has) return previous;
  if (!scratch.defined()) scratch = at::empty_like(initial);
  const int64_t H = initial.size(1);
  scratch.narrow(0, 0, had).copy_(at::from_blob(previous, {had, H}, initial.options()));
  scratch.narrow(0, had, has - had).copy_(initial.narrow(0, had, has - had));
  return scratch.data_ptr();
}

// On the CPU a memcpy: the ATen copy cost a one-step call (a cell) more than its gate math.
void Pass::keep_final(int64_t s, void* rows, Tensor& final) const {
  const int64_t has = batch(s), next = s + 1 < steps.T ? batch(s + 1) : 0;
  if (next >= has) return;
  const int64_t row_bytes = final.size(1) * final.element_size();
  if (final.is_cpu()) {
    std::memcpy(static_cast<char*>(final.data_ptr()) + next * row_bytes,
                static_cast<const char*>(rows) + next * row_bytes, (has - next) * row_bytes);
    return;
  }
  const Tensor state = at::from_blob(rows, {has, final.size(1)}, final.options());
  final.narrow(0, next, has - next).copy_(state.narrow(0, next, has - next));
}

}  // namespace fusedrnn
