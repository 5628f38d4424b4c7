#include "scratch.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <cstdlib>
#include <deque>
#include <mutex>

#include "sequence.h"

namespace fusedrnn {
namespace {

// Below this a temporary comes straight from the allocator: glibc serves small blocks from its
// free lists without faulting pages in.
constexpr int64_t kMinPooledBytes = int64_t{1} << 20;

class Pool {
 public:
  // The smallest kept block of at least `bytes` and at most twice that (a much larger one stays
  // for the call that needs it), else a new one.
  at::Tensor acquire(int64_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto best = blocks_.end();
      for (auto it = blocks_.begin(); it != blocks_.end(); ++it) {
        const int64_t size = it->numel();
        if (size >= bytes && size <= 2 * bytes && (best == blocks_.end() || size < best->numel()))
          best = it;
      }
      if (best != blocks_.end()) {
        at::Tensor block = std::move(*best);
        blocks_.erase(best);
        held_ -= block.numel();
        return block;
      }
    }
    return at::empty({bytes}, at::TensorOptions().dtype(at::kByte));
  }

  // Keeps `block` if nothing else refers to it and it fits under the limit, making room by
  // freeing the oldest kept blocks; otherwise frees it.
  void release(at::Tensor block) {
    if (block.storage().use_count() != 1) return;
    std::deque<at::Tensor> freed;  // freed after the lock is released
    std::lock_guard<std::mutex> lock(mutex_);
    if (block.numel() > limit_) return;
    evict_to(limit_ - block.numel(), freed);
    held_ += block.numel();
    blocks_.push_back(std::move(block));
  }

  int64_t held() {
    std::lock_guard<std::mutex> lock(mutex_);
    return held_;
  }
  int64_t limit() {
    std::lock_guard<std::mutex> lock(mutex_);
    return limit_;
  }
  void set_limit(int64_t bytes) {
    std::deque<at::Tensor> freed;
    std::lock_guard<std::mutex> lock(mutex_);
    limit_ = bytes;
    evict_to(limit_, freed);
  }
  void clear() {
    std::deque<at::Tensor> freed;
    std::lock_guard<std::mutex> lock(mutex_);
    evict_to(0, freed);
  }

 private:
  // Moves the oldest kept blocks into `freed` until at most `bytes` are kept (the caller holds
  // the lock, and frees them once it is released).
  void evict_to(int64_t bytes, std::deque<at::Tensor>& freed) {
    while (held_ > bytes) {
      held_ -= blocks_.front().numel();
      freed.push_back(std::move(blocks_.front()));
      blocks_.pop_front();
    }
  }

  std::mutex mutex_;
  std::deque<at::Tensor> blocks_;  // bytes, oldest first
  int64_t held_ = 0;
  int64_t limit_ = bytes_from_environment("FUSEDRNN_SCRATCH_LIMIT_MB", 256);
};

Pool& pool() {
  static Pool* instance = new Pool();  // never destroyed: calls may still run at exit
  return *instance;
}

}  // namespace

int64_t bytes_from_environment(const char* name, int64_t default_megabytes) {
  const char* text = std::getenv(name);
  if (text && *text) {
    char* end = nullptr;
    const long long megabytes = std::strtoll(text, &end, 10);
    if (end && *end == '\0' && megabytes >= 0) return megabytes << 20;
  }
  return default_megabytes << 20;
}

Scratch::~Scratch() {
  for (at::Tensor& block : blocks_) pool().release(std::move(block));
}

at::Tensor Scratch::take(at::IntArrayRef sizes) {
  return take(sizes, options_.dtype().toScalarType());
}

at::Tensor Scratch::take(at::IntArrayRef sizes, at::ScalarType dtype) {
  const int64_t bytes = c10::multiply_integers(sizes) * c10::elementSize(dtype);
  if (!pooled_ || bytes < kMinPooledBytes) return fresh(sizes, options_.dtype(dtype));
  blocks_.push_back(pool().acquire(bytes));
  return blocks_.back().narrow(0, 0, bytes).view(dtype).view(sizes);
}

namespace scratch {
at::Tensor kept(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const int64_t bytes =
      c10::multiply_integers(sizes) * c10::elementSize(options.dtype().toScalarType());
  if (!options.device().is_cpu() || bytes < kMinPooledBytes) return fresh(sizes, options);
  auto block = std::make_shared<at::Tensor>(pool().acquire(bytes));
  return at::from_blob(
      block->data_ptr(), sizes, [block](void*) { pool().release(std::move(*block)); }, options);
}

int64_t held_bytes() { return pool().held(); }
int64_t limit_bytes() { return pool().limit(); }
void set_limit_bytes(int64_t bytes) {
  TORCH_CHECK(bytes >= 0, "fusedrnn: the scratch limit must be at least 0 bytes, got ", bytes);
  pool().set_limit(bytes);
}
void empty_cache() { pool().clear(); }
}  // namespace scratch

}  // namespace fusedrnn
