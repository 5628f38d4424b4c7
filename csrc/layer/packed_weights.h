// The fused CPU product's weights, packed into panels (cpu/recurrence.h), and kept between
// calls that read the same weights.
//
// Why keep them: an inference call packed W_hh (and W_ih where its loop projects the input) anew
// each time, into memory fresh from the allocator: 9-14% of an LSTM's inference call at T=48
// B=32 H=128 and at T=100 B=1 H=64; reusing the packing, after the comparison below, made such
// calls 1.04x-1.08x faster (benchmarks/NOTES.md). Why a copy of the weights beside
// each kept packing: a kept packing is reused only for the very bytes it was packed from, as
// the version counter that optimizer steps and load_state_dict advance misses `param.data`
// edits (`p.data.copy_(x)` leaves p._version as it was). Comparing with the copy reads the
// weights once; packing read them with a transposition and wrote a new buffer. The cache keeps
// at most a limit of bytes (copies and packings; FUSEDRNN_PACKED_WEIGHTS_LIMIT_MB, default 64),
// dropping packings whose weights were freed, and for new ones the least recently used among
// those left unused a while (so that weights beyond the limit do not thrash it);
// fusedrnn.empty_cache() frees it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

#include "../cpu/recurrence.h"

namespace fusedrnn {

// w packed into `panels` (W = w^T for w [N, K] when `transposed`, else W = w [K, N]), as
// bfloat16 pairs where the panels say so; w contiguous. Given `passed`, the caller's tensor that
// w was prepared from (w itself, or a float32 widening of a half-precision one), and where it is
// contiguous: taken from the cache when an earlier call packed from a tensor at the same
// address, of the same shape and dtype and with bytes equal to passed's, the same way; else
// packed and kept there. Otherwise packed for this call alone.
at::Tensor packed_weights(const cpu::Panels& panels, const at::Tensor& w, bool transposed,
                          const std::optional<at::Tensor>& passed);

namespace packed_cache {
struct Stats {
  int64_t held_bytes, limit_bytes, entries, hits, misses;
};
Stats stats();
void set_limit_bytes(int64_t bytes);  // also drops what is kept beyond the new limit
void clear();                         // drops every kept packing
}  // namespace packed_cache

}  // namespace fusedrnn
