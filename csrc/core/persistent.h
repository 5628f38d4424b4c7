// The persistent recurrence (backend cuda-persistent): one cooperative launch runs every step of
// a layer's loop, each block holding its slice of the recurrent weights in shared memory, a
// grid-wide barrier between steps. Framework-free, shared by the CUDA kernel
// (cuda/persistent.cu) and its CPU model (cpu/persistent_model.cpp), so that the model checks
// the kernel's decomposition in CI:
//
//   - the plan: which block owns which hidden units, the shared-memory layout, or why a shape
//     cannot run (a pure function of the shape and the device's limits);
//   - one lane's share of a warp tile of the product, in the order both run it;
//   - the loop's arguments: the layer's step table (what Recurrence::loop's plan returns for
//     each step) and the product's shape.
//
// Block c owns hidden units [c U, c U + U) of every gate: the rows of W it multiplies by the
// state and the units its pointwise step (core/elements.h) writes, so each step's element
// reads only what its own block wrote; other blocks' results are read only as the next step's
// state, after the barrier. Nothing but the step's own rows is ever written twice, so blocks
// never race across the barrier.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "elements.h"

namespace fusedrnn {

// One step of a layer's loop: the rows the product reads (null: no product this step), how
// many, where the product goes, and the pointwise step that follows.
template <typename Args> struct Step {
  const void* in;
  int64_t rows;
  void* out;
  Args args;
};

namespace persistent {

constexpr int kThreads = 256;      // a block: 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kRowTile = 4;        // a warp tile: 4 rows of W ...
constexpr int kBatchTile = 8;      // ... times 8 rows of the state: 32 sums, one per lane
constexpr int kVectorBytes = 16;   // each lane loads 16 bytes of W and of the state at a time

static_assert(kRowTile * kBatchTile == 32, "a warp tile has one sum per lane");

// What the plan needs to know about a device (cudaDeviceProp, or a table for tests).
struct DeviceLimits {
  int sms = 0;
  int64_t shared_per_block = 0;    // opt-in maximum of a block's dynamic shared memory
  int64_t shared_per_sm = 0;
  int64_t reserved_per_block = 0;  // what the runtime keeps of each block's shared memory
  bool cooperative = false;        // can launch cooperative kernels
};

// The product one loop repeats each step: out[rows, gates * units] (+)= in[rows, K] times W,
// W = w^T for the forward (w = w_hh, [gates * units, K]) and w for the gradient of h
// (w = w_hh, [K, units], gates = 1).
struct ProductShape {
  int64_t units, gates, K, batch;
  int element_bytes;  // of the arithmetic type: the weights and state are held in it
};

struct Plan {
  std::string refusal;  // empty: it runs
  int blocks = 0;
  int units_per_block = 0;
  int rows = 0;         // gates * units_per_block, padded to kRowTile with zero rows
  int k_padded = 0;     // K padded to a whole vector with zeros
  int batch_chunk = 0;  // state rows staged at once, a multiple of kBatchTile
  int64_t shared_bytes = 0;

  // Shared memory: the weights' slice [rows][k_padded], then the state [batch_chunk][k_padded].
  int64_t weight_elements() const { return int64_t(rows) * k_padded; }
};

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// The partition for `shape` on a device with `limits`: as many blocks as the device has SMs
// (one block per SM, each owning ceil(units / SMs) units), the largest batch chunk that fits
// beside the weights. Deterministic: the same inputs give the same plan, so results are
// bitwise repeatable.
inline Plan plan(const ProductShape& shape, const DeviceLimits& limits) {
  Plan p;
  if (!limits.cooperative) {
    p.refusal = "the device cannot launch cooperative kernels";
    return p;
  }
  if (shape.units < 1 || shape.K < 1 || shape.batch < 1 || limits.sms < 1) {
    p.refusal = "an empty product";
    return p;
  }
  const int64_t vector = kVectorBytes / shape.element_bytes;
  const int64_t blocks = std::min<int64_t>(limits.sms, shape.units);
  const int64_t units_per_block = (shape.units + blocks - 1) / blocks;
  p.units_per_block = int(units_per_block);
  p.blocks = int((shape.units + units_per_block - 1) / units_per_block);
  p.rows = int(round_up(shape.gates * units_per_block, kRowTile));
  p.k_padded = int(round_up(shape.K, vector));
  const int64_t budget = std::min(limits.shared_per_block,
                                  limits.shared_per_sm - limits.reserved_per_block);
  const int64_t weight_bytes = p.weight_elements() * shape.element_bytes;
  const int64_t row_bytes = int64_t(p.k_padded) * shape.element_bytes;
  const int64_t chunk = std::min<int64_t>(round_up(shape.batch, kBatchTile),
                                          (budget - weight_bytes) / row_bytes / kBatchTile *
                                              kBatchTile);
  if (chunk < kBatchTile) {
    p.refusal = "one block's slice of the recurrent weights (" +
                std::to_string(shape.gates) + " x " + std::to_string(units_per_block) +
                " rows of " + std::to_string(shape.K) + ", " +
                std::to_string(weight_bytes / 1024) + " KiB) and " +
                std::to_string(kBatchTile) + " rows of the state (" +
                std::to_string(kBatchTile * row_bytes / 1024) + " KiB) exceed the " +
                std::to_string(budget / 1024) + " KiB of shared memory a block may have";
    return p;
  }
  p.batch_chunk = int(chunk);
  p.shared_bytes = weight_bytes + chunk * row_bytes;
  return p;
}

// The arguments of one loop, for the kernel and its model alike.
template <typename Args> struct LoopArgs {
  const Step<Args>* steps;  // the layer's step table, in the order they run
  int64_t count;
  const void* w;            // w_hh as the layer holds it
  bool transposed;          // W = w^T: w is [gates * units, K]; else w is [K, units]
  bool accumulate;          // out += the product; else out = it
  int64_t units, gates, K;
  int units_per_block, rows, k_padded, batch_chunk;
  unsigned* barrier;        // the grid barrier's counter, zero at launch (kernel only)
  uint64_t watchdog_ns;     // a barrier wait longer than this traps (kernel only)
};

FUSEDRNN_HD float fma_(float a, float b, float c) { return fmaf(a, b, c); }
FUSEDRNN_HD double fma_(double a, double b, double c) { return fma(a, b, c); }

// V consecutive elements from 16-byte-aligned shared memory: one 16-byte load on the GPU.
template <typename A, int V> FUSEDRNN_HD void load_vector(const A* p, A (&v)[V]) {
#if defined(__CUDA_ARCH__)
  static_assert(sizeof(A) * V == 16, "16-byte vectors");
  if constexpr (sizeof(A) == 4) {
    const float4 x = *reinterpret_cast<const float4*>(p);
    v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
  } else {
    const double2 x = *reinterpret_cast<const double2*>(p);
    v[0] = x.x, v[1] = x.y;
  }
#else
  for (int i = 0; i < V; ++i) v[i] = p[i];
#endif
}

// Lane `lane`'s partial sums of one warp tile: kRowTile rows of the weights' slice `w` times
// kBatchTile rows of the staged state `h` (both row-major, k_padded wide), over the vectors
// k = lane, lane + 32, ...: sum[r][b] = sum over those k of w[r][k] h[b][k], one fused
// multiply-add at a time in this order. The warp then adds the 32 lanes' sums in a butterfly
// (xor 16, 8, 4, 2, 1), which the model repeats.
template <typename A>
FUSEDRNN_HD void lane_sums(const A* w, const A* h, int k_padded, int lane,
                           A (&sum)[kRowTile][kBatchTile]) {
  constexpr int V = kVectorBytes / sizeof(A);
  for (int r = 0; r < kRowTile; ++r)
    for (int b = 0; b < kBatchTile; ++b) sum[r][b] = A(0);
  for (int k = lane * V; k < k_padded; k += 32 * V) {
    A wv[kRowTile][V], hv[kBatchTile][V];
    for (int r = 0; r < kRowTile; ++r) load_vector(w + r * k_padded + k, wv[r]);
    for (int b = 0; b < kBatchTile; ++b) load_vector(h + b * k_padded + k, hv[b]);
    for (int v = 0; v < V; ++v)
      for (int r = 0; r < kRowTile; ++r)
        for (int b = 0; b < kBatchTile; ++b) sum[r][b] = fma_(wv[r][v], hv[b][v], sum[r][b]);
  }
}

// The product's output column of row r of block `block`'s slice (rows are gate-major:
// r = gate * units_per_block + unit), or -1 for a padding row or a unit past the last.
template <typename Args>
FUSEDRNN_HD int64_t column_of(const LoopArgs<Args>& a, int block, int r) {
  const int gate = r / a.units_per_block, unit_in_block = r % a.units_per_block;
  const int64_t unit = int64_t(block) * a.units_per_block + unit_in_block;
  if (gate >= a.gates || unit >= a.units) return -1;
  return gate * a.units + unit;
}

// Element (r, k) of W, as the block's slice holds it.
template <typename T, typename A, typename Args>
FUSEDRNN_HD A weight(const LoopArgs<Args>& a, int64_t column, int64_t k) {
  const T* w = static_cast<const T*>(a.w);
  return a.transposed ? load<A>(w + column * a.K + k)
                      : load<A>(w + k * a.gates * a.units + column);
}

}  // namespace persistent
}  // namespace fusedrnn
