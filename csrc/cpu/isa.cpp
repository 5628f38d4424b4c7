#include "isa.h"

#include <c10/util/Exception.h>

#include <sys/syscall.h>
#include <unistd.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif

#include <atomic>
#include <cstdlib>

#include "recurrence.h"

namespace fusedrnn::cpu {

// Each ISA's copy of the vector kernels (kernels_<isa>.cpp).
#define FUSEDRNN_DECLARE_KERNELS(isa)                                                         \
  namespace isa {                                                                             \
  template <typename Args>                                                                    \
  int64_t vector_units(Dtype dtype, const Args& args, int64_t first_row, int64_t last_row,    \
                       int64_t begin, int64_t end);                                           \
  Panels panels_for(Isa id, Dtype dtype, int64_t gates, int64_t hidden, int64_t depth);       \
  void pack(Dtype dtype, const Panels& panels, const void* w, bool transposed, void* packed); \
  void product_panels(Dtype dtype, const Product& product, int64_t begin, int64_t end);       \
  void small_product(Dtype dtype, const SmallProduct& product);                               \
  }
#if defined(__x86_64__) && defined(__GNUC__)
#define FUSEDRNN_HAS_X86_KERNELS 1
FUSEDRNN_DECLARE_KERNELS(avx2)
FUSEDRNN_DECLARE_KERNELS(avx512)
// The products over bfloat16 panels (kernels_avx512_bf16.cpp); avx512_bf16's and amx's other
// kernels are avx512's.
namespace avx512_bf16 {
void pack(const Panels& panels, const float* w, bool transposed, void* packed);
void product_panels(const Product& product, int64_t begin, int64_t end);
void round_transposed(const float* in, int64_t rows, int64_t cols, int64_t first_col,
                      int64_t last_col, void* out, float* sums);
}  // namespace avx512_bf16
#endif

// Runs the statement `call` with `kernels` naming the namespace of the ISA's kernels, and
// `otherwise` for an ISA without vector kernels.
#ifdef FUSEDRNN_HAS_X86_KERNELS
#define FUSEDRNN_ON_ISA(isa, call, otherwise)  \
  switch (isa) {                               \
    case Isa::kAvx2: {                         \
      namespace kernels = avx2;                \
      call;                                    \
    }                                          \
    case Isa::kAvx512:                         \
    case Isa::kAvx512Bf16:                     \
    case Isa::kAmx: {                          \
      namespace kernels = avx512;              \
      call;                                    \
    }                                          \
    default: otherwise;                        \
  }
#else
#define FUSEDRNN_ON_ISA(isa, call, otherwise) otherwise;
#endif

namespace {

constexpr int kDetected = -1;
std::atomic<int> chosen{kDetected - 1};  // not yet read from the environment

#ifdef FUSEDRNN_HAS_X86_KERNELS
// AMX-TILE and AMX-BF16 (CPUID leaf 7, EDX bits 24 and 22), and Linux's leave to use the tiles'
// 8 KB of state: a process asks for it once (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA), as
// oneDNN does; a kernel or hypervisor that refuses leaves the tiles faulting.
bool amx_tiles_usable() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  if (!(edx & (1u << 24)) || !(edx & (1u << 22))) return false;
#ifdef __linux__
  constexpr long kRequestPermission = 0x1023, kTileData = 18;
  return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
#else
  return false;
#endif
}
#endif

Isa from_environment() {
  const char* name = std::getenv("FUSEDRNN_CPU_ISA");
  if (name == nullptr || *name == '\0') return detected_isa();
  const std::optional<Isa> isa = isa_named(name);
  TORCH_CHECK(isa, "FUSEDRNN_CPU_ISA=", name,
              ": expected scalar, avx2, avx512, avx512_bf16 or amx");
  TORCH_CHECK(*isa <= detected_isa(), "FUSEDRNN_CPU_ISA=", name, ": this CPU runs at most ",
              name_of(detected_isa()));
  return *isa;
}

}  // namespace

const char* name_of(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx512Bf16: return "avx512_bf16";
    case Isa::kAmx: return "amx";
  }
  return "?";
}

std::optional<Isa> isa_named(const std::string& name) {
  for (const Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16, Isa::kAmx})
    if (name == name_of(isa)) return isa;
  return std::nullopt;
}

Isa detected_isa() {
#ifdef FUSEDRNN_HAS_X86_KERNELS
  // AVX-512 as ATen's AVX512 vector types use it: F, BW, VL and DQ; then AVX512-BF16.
  static const Isa isa = [] {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return Isa::kScalar;
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    if (!avx512) return Isa::kAvx2;
    if (!__builtin_cpu_supports("avx512bf16")) return Isa::kAvx512;
    return amx_tiles_usable() ? Isa::kAmx : Isa::kAvx512Bf16;
  }();
  return isa;
#else
  return Isa::kScalar;
#endif
}

Isa active_isa() {
  int value = chosen.load(std::memory_order_relaxed);
  if (value < kDetected) {
    value = static_cast<int>(from_environment());
    chosen.store(value, std::memory_order_relaxed);
  }
  return value == kDetected ? detected_isa() : static_cast<Isa>(value);
}

void set_isa(std::optional<Isa> isa) {
  TORCH_CHECK(!isa || *isa <= detected_isa(), "fusedrnn: this CPU runs at most ",
              name_of(detected_isa()), ", not ", name_of(*isa));
  chosen.store(isa ? static_cast<int>(*isa) : kDetected, std::memory_order_relaxed);
}

bool has_fused_steps() { return active_isa() != Isa::kScalar; }

bool has_bf16_products() { return active_isa() >= Isa::kAvx512Bf16; }

int64_t l2_cache_bytes() {
  static const int64_t bytes = [] {
    const long reported = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return reported > 0 ? int64_t{reported} : int64_t{512} << 10;
  }();
  return bytes;
}

template <typename Args>
int64_t vector_units(Dtype dtype, const Args& args, int64_t first_row, int64_t last_row,
                     int64_t begin, int64_t end) {
  FUSEDRNN_ON_ISA(active_isa(),
                  return kernels::vector_units(dtype, args, first_row, last_row, begin, end),
                  return begin)
}
#define FUSEDRNN_INSTANTIATE(Args) \
  template int64_t vector_units(Dtype, const Args&, int64_t, int64_t, int64_t, int64_t);
FUSEDRNN_FOR_EACH_STEP(FUSEDRNN_INSTANTIATE)
#undef FUSEDRNN_INSTANTIATE

// The fused recurrence's kernels exist only for ISAs with vectors: callers check
// has_fused_steps() first.
[[noreturn]] void no_kernels(Isa isa) {
  TORCH_CHECK(false, "fusedrnn: no fused recurrence for the ", name_of(isa), " ISA");
}

Panels panels_for(Dtype dtype, int64_t gates, int64_t hidden, int64_t depth) {
  const Isa isa = active_isa();
  FUSEDRNN_ON_ISA(isa, return kernels::panels_for(isa, dtype, gates, hidden, depth),
                  no_kernels(isa))
}

void pack(Dtype dtype, const Panels& panels, const void* w, bool transposed, void* packed) {
#ifdef FUSEDRNN_HAS_X86_KERNELS
  if (panels.bf16)
    return avx512_bf16::pack(panels, static_cast<const float*>(w), transposed, packed);
#endif
  FUSEDRNN_ON_ISA(panels.isa, return kernels::pack(dtype, panels, w, transposed, packed),
                  no_kernels(panels.isa))
}

void product_panels(Dtype dtype, const Product& product, int64_t begin, int64_t end) {
#ifdef FUSEDRNN_HAS_X86_KERNELS
  if (product.panels->bf16) return avx512_bf16::product_panels(product, begin, end);
#endif
  FUSEDRNN_ON_ISA(product.panels->isa,
                  return kernels::product_panels(dtype, product, begin, end),
                  no_kernels(product.panels->isa))
}

void round_transposed(const float* in, int64_t rows, int64_t cols, int64_t first_col,
                      int64_t last_col, void* out, float* sums) {
  TORCH_CHECK(has_bf16_products(), "fusedrnn: round_transposed needs AVX512-BF16");
#ifdef FUSEDRNN_HAS_X86_KERNELS
  avx512_bf16::round_transposed(in, rows, cols, first_col, last_col, out, sums);
#endif
}

void small_product(Dtype dtype, const SmallProduct& product) {
  FUSEDRNN_ON_ISA(active_isa(), return kernels::small_product(dtype, product),
                  no_kernels(active_isa()))
}

}  // namespace fusedrnn::cpu
