// The fused CPU recurrence: a step's product with the recurrent weights and its pointwise kernel
// in one pass per thread. Each thread owns a slice of the hidden units (that slice of every gate),
// so it reads the product it just wrote from its own cache, and it keeps the same slice of the
// weights, repacked into SIMD-width panels, in its own cache from step to step. No GEMM call and
// no ATen dispatch per step: small and medium layers are bound by exactly those costs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>

#include "../core/steps.h"
#include "isa.h"

namespace fusedrnn::cpu {

// How a weight matrix is cut for the product out[rows, G*H] = in[rows, K] W, W [K, G*H].
// A panel is `vectors()` SIMD vectors wide, stored [K][vectors() * lanes]; its vector v covers
// `lanes` consecutive units of gate v / blocks, unit block p * blocks + v % blocks. A panel thus
// holds every gate of its units, and a thread that owns whole panels owns whole units.
struct Panels {
  Isa isa;         // whose kernels packed it, and multiply by it
  int64_t gates;   // G: gate blocks of the output (the cell's, or 1 for a product onto h)
  int64_t hidden;  // H: units per gate block
  int64_t depth;   // K
  int64_t lanes;   // L: elements per SIMD vector
  int64_t blocks;  // unit blocks (of L units) per panel
  int64_t count;   // panels
  // Packed as bfloat16 for a float32 product whose input rows are rounded to bfloat16 (the
  // products of bfloat16 layers, on AVX512-BF16): each row of a panel then holds k and k + 1
  // side by side, [packed_depth() / 2][vectors() * lanes][2], the pairs past depth zero. For
  // AMX, packed_depth() is a whole number of tiles' depth (32), so every tile loads whole.
  bool bf16 = false;

  int64_t vectors() const { return gates * blocks; }
  int64_t units() const { return blocks * lanes; }  // units per panel
  int64_t packed_depth() const {
    if (!bf16) return depth;
    const int64_t multiple = isa == Isa::kAmx ? 32 : 2;
    return (depth + multiple - 1) / multiple * multiple;
  }
  int64_t size() const { return count * packed_depth() * vectors() * lanes; }  // packed elements
};

// Where vector v of panel p writes: its first output column, and how many of its lanes are
// units (fewer in the last block when L does not divide H).
struct Columns {
  int64_t first, lanes;
};

inline Columns columns(const Panels& panels, int64_t p, int64_t v) {
  const int64_t gate = v / panels.blocks, block = p * panels.blocks + v % panels.blocks;
  const int64_t unit = block * panels.lanes;
  return {gate * panels.hidden + unit, std::clamp<int64_t>(panels.hidden - unit, 0, panels.lanes)};
}

// The panels for the ISA in use (isa.h: panels_for), and pack(), which packs W into `packed`
// (panels.size() elements, of bfloat16 when panels.bf16; units past H are zero): W = w^T for
// w [G*H, K] when `transposed` (the forward's w_hh), else W = w for w [K, G*H] (w_hh itself, for
// the gradient reaching h). The fused recurrence takes float32 and float64 (layer/ widens half
// types), and w in the product's dtype.

// The product of one fused step: out (+)= bias + in W (+ input W_ih), each term left out where
// its rows are null.
struct Product {
  const Panels* panels;
  const void* packed;  // panels->size() elements
  const void* in;      // [rows, K], or null
  void* out;           // [rows, G*H]
  int64_t rows;
  bool accumulate;
  const void* bias = nullptr;  // [G*H], added to every row (a layer's biases), or null
  // The step's input projection, where the loop computes it (layer/projections.h:
  // projects_in_loop), summed in the same accumulators as in W: null, or [rows,
  // input_panels->depth], with W_ih packed into `input_panels`, which cut the same units as
  // `panels` (float32 and float64 panels only).
  const void* input = nullptr;
  const Panels* input_panels = nullptr;
  const void* input_packed = nullptr;
  // Nonzero: this product is one step of a loop, unique to it in the process (fused_loop sets
  // it). A thread that runs several of the step's panel ranges then rounds the step's rows to
  // bfloat16 once (bfloat16 panels), not once a range.
  uint64_t step_id = 0;
};

// Fills the s-th step of a loop: its product (whose `in` may be null) and its pointwise step.
template <typename Args>
using PlanStep = std::function<void(int64_t s, Product& product, Args& args)>;
// Called once every result of the s-th step is in place.
using StepDone = std::function<void(int64_t s)>;

// Runs `steps` steps, each the product and then the pointwise step on the same units, on one
// team of threads for the whole loop, each thread on its own panels. One thread plans each step
// and reports the one before it done, while the others wait at a barrier, so `plan` and `done`
// may move rows between the loop's buffers. With `lookahead`, the planner instead plans step
// s + 1 (and reports s - 1 done) while the team computes step s, one barrier a step: for loops
// whose plans read and write nothing the steps do (padded batches). `rows`, the most rows of any
// step, sizes the team.
template <typename Args>
void fused_loop(Dtype dtype, const Panels& panels, int64_t steps, int64_t rows, bool lookahead,
                const PlanStep<Args>& plan, const StepDone& done);
// The product alone.
void fused_product(Dtype dtype, const Product& product);
// Whether a loop's team shares out each step's panels between its threads as they finish their
// own (on; team.cpp: StepPanels), and how many panels a thread has run from another's share so
// far in this process: a switch and a count for tests and timings.
void set_panel_sharing(bool on);
int64_t panels_taken_over();

// small_product's: columns [begin, end) of out[M, N] (+)= in[M, K] W, W = w^T for w [N, K] when
// `transposed`, else w [K, N]: straight from the unpacked weights, on the calling thread (the
// caller splits the columns between threads), for products of a few rows. A BLAS packs the
// weights on every call, which at a single step costs more than the product: MKL's sgemm spent
// half of an LSTMCell's time at B=16 H=512 packing W (and its sgemv took 1.5 us for 256x64 on
// an AMD CPU, where this takes 0.2). Float32 and float64, on an ISA with vector kernels
// (has_fused_steps).
struct SmallProduct {
  int64_t M, N, K;
  const void* in;  // [M, K]
  const void* w;
  bool transposed;
  void* out;  // [M, N]
  bool accumulate;
  int64_t begin, end;  // the columns of out to compute
};

}  // namespace fusedrnn::cpu
