// CPU temporaries of an op call (buffers that never leave the call), taken from one process-wide
// pool of blocks kept between calls, up to a limit.
//
// Why keep them: glibc maps every block over its mmap threshold (at most 32 MB) anew and the
// kernel faults it in page by page at first touch; a GRU's training step at T=100, B=64, H=512
// (three 39 MB temporaries) spent ~17% of its samples in the kernel. Why a shared pool with a
// limit: a block per thread, kept for the thread's life, held gigabytes after one long request
// on each thread of a server's pool. Here a call takes blocks from the pool and gives them back
// when it ends; the pool keeps what fits under its limit (FUSEDRNN_SCRATCH_LIMIT_MB, default
// 256; fusedrnn.set_scratch_limit) and frees the rest, oldest first. fusedrnn.empty_cache()
// frees everything kept. Other devices allocate as usual (PyTorch caches CUDA memory itself).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace fusedrnn {

class Scratch {
 public:
  explicit Scratch(const at::Tensor& like) : options_(like.options()), pooled_(like.is_cpu()) {}
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  // An uninitialised buffer of these sizes, in the dtype (or `dtype`) and on the device of
  // `like`.
  at::Tensor take(at::IntArrayRef sizes);
  at::Tensor take(at::IntArrayRef sizes, at::ScalarType dtype);

 private:
  at::TensorOptions options_;
  bool pooled_;
  std::vector<at::Tensor> blocks_;  // taken from the pool, given back by the destructor
};

// A memory limit from the environment variable `name`, in megabytes (a whole number, 0 and up),
// else the default; in bytes.
int64_t bytes_from_environment(const char* name, int64_t default_megabytes);

namespace scratch {
// A buffer that leaves its call (what a forward keeps for its backward), from the same pool on
// the CPU: its block goes back to the pool once the last tensor on it is freed, so that the next
// call's buffer is not faulted in page by page again. Elsewhere, or under 1 MB, a new tensor.
at::Tensor kept(at::IntArrayRef sizes, const at::TensorOptions& options);

int64_t held_bytes();        // kept in the pool now, between calls
int64_t limit_bytes();
void set_limit_bytes(int64_t bytes);  // also trims what is kept to the new limit
void empty_cache();          // frees every kept block
}  // namespace scratch

}  // namespace fusedrnn
