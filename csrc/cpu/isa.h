// The CPU instruction sets fusedrnn's vector kernels are compiled for, which one this CPU runs,
// and the kernels of each. The vector kernels (vectorized_steps.h, vectorized_product.h) are
// written once and compiled once per ISA (kernels_<isa>.cpp), each copy in a namespace of its
// own, fusedrnn::cpu::<isa>, with its own copies of the gate math (core/gates.h), so that no copy
// depends on which one the linker keeps. Calls pick a copy at run time.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "../core/steps.h"

namespace fusedrnn::cpu {

// From least to most capable. avx512_bf16 is AVX-512 with AVX512-BF16's dot products, which
// run the products of bfloat16 layers (kernels_avx512_bf16.cpp); its other kernels are AVX-512's.
// amx is avx512_bf16 with AMX's bfloat16 tile products for those products, from 16 rows (the
// same file); detected only where the kernel lets this process use the tiles.
enum class Isa { kScalar, kAvx2, kAvx512, kAvx512Bf16, kAmx };

const char* name_of(Isa isa);
std::optional<Isa> isa_named(const std::string& name);

// The most capable ISA this CPU runs among those built.
Isa detected_isa();
// The ISA in use: the detected one, or a lower one forced by FUSEDRNN_CPU_ISA (read at the first
// call) or set_isa. Raises for an unknown name or an ISA this CPU lacks.
Isa active_isa();
void set_isa(std::optional<Isa> isa);  // nothing: back to the detected ISA

// Whether the fused recurrence runs here (an ISA with vector kernels is in use).
bool has_fused_steps();
// Whether bfloat16 layers' products run in bfloat16 here (an ISA with bfloat16 dot products).
bool has_bf16_products();

// The bytes of a core's L2 cache, as the C library reports it (512 KiB where it does not).
int64_t l2_cache_bytes();

struct Panels;
struct Product;
struct SmallProduct;

// The vector kernels of the ISA in use (the product's: the ISA its panels were packed for).
// vector_units runs hidden units [begin, end) of rows [first_row, last_row) of a step in whole
// vectors (float32 and float64) and returns the first unit it left to the scalar loop, the same
// in every row.
template <typename Args>
int64_t vector_units(Dtype dtype, const Args& args, int64_t first_row, int64_t last_row,
                     int64_t begin, int64_t end);
// panels_for's `dtype` is the product's: float32 products of bfloat16 layers pass kBFloat16,
// which packs bfloat16 panels on an ISA with bfloat16 dot products (Panels::bf16), float32 ones
// elsewhere.
Panels panels_for(Dtype dtype, int64_t gates, int64_t hidden, int64_t depth);
void pack(Dtype dtype, const Panels& panels, const void* w, bool transposed, void* packed);
void product_panels(Dtype dtype, const Product& product, int64_t begin, int64_t end);
void small_product(Dtype dtype, const SmallProduct& product);
// Columns [first_col, last_col) of in [rows, cols] float32, rounded to bfloat16 (to nearest even)
// into the same rows of out [cols, rows]: the transposed copy that oneDNN's bfloat16 GEMMs read
// fastest as the reduction's operand; with `sums` ([cols], or null), each column's float32 sum
// in the same pass. Where has_bf16_products() only.
void round_transposed(const float* in, int64_t rows, int64_t cols, int64_t first_col,
                      int64_t last_col, void* out, float* sums);

}  // namespace fusedrnn::cpu
