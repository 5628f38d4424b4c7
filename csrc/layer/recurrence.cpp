#include "recurrence.h"

#include <ATen/core/Tensor.h>
#ifdef FUSEDRNN_WITH_CUDA
#include <c10/cuda/CUDAStream.h>

#include "../cuda/step_gemm.h"
#endif

#include "gemm.h"
#include "packed_weights.h"
#include "projections.h"

namespace fusedrnn {
namespace {

template <typename Args>
void step_on_device(const Tensor& like, const Args& args) {
  if (like.is_cuda()) {
#ifdef FUSEDRNN_WITH_CUDA
    cuda::step(dtype_of(like), args,
               c10::cuda::getCurrentCUDAStream(like.device().index()).stream());
#else
    TORCH_CHECK(false, "fusedrnn was built without CUDA; reinstall it where nvcc and a CUDA build "
                       "of torch are present (see the README)");
#endif
  } else {
    TORCH_CHECK(like.is_cpu(), "fusedrnn: tensors on ", like.device(), " are not supported");
    cpu::step(dtype_of(like), args);
  }
}

}  // namespace

#define FUSEDRNN_DEFINE_RUN_STEP(Args) \
  void run_step(const Tensor& like, const Args& args) { step_on_device(like, args); }
FUSEDRNN_FOR_EACH_STEP(FUSEDRNN_DEFINE_RUN_STEP)
#undef FUSEDRNN_DEFINE_RUN_STEP

Recurrence::Recurrence(const LayerCall& call, const Tensor& w, int64_t gates, bool transposed,
                       bool accumulate, const ForwardLoop& forward)
    : w_(w), backend_(call.backend), gates_(gates), transposed_(transposed),
      accumulate_(accumulate) {
  if (backend_ == Backend::kCpuFused) {
    const int64_t N = transposed ? w.size(0) : w.size(1), K = transposed ? w.size(1) : w.size(0);
    panels_ = cpu::panels_for(call.product_dtype, gates, N / gates, K);
    // A forward multiplies by the call's w_hh: the cache compares the caller's.
    TORCH_INTERNAL_ASSERT(!forward.keep_packed || w.is_same(call.w_hh));
    const auto passed = [&](const Tensor& t) {
      return forward.keep_packed ? OptionalTensor(t) : std::nullopt;
    };
    packed_ = packed_weights(panels_, w, transposed, passed(call.w_hh_passed));
    // The biases start each step's accumulators: no pass over the input projection to add them
    // (4% of an LSTM at T=100 B=64 H=32).
    if (forward.bias && forward.bias_2) bias_ = forward.bias->add(*forward.bias_2);  // both or none
    if (forward.input_in_loop && projects_in_loop(call, forward.gates_kept)) {
      input_ = call.input;
      input_panels_ = cpu::panels_for(call.product_dtype, gates, N / gates, call.I);
      input_packed_ = packed_weights(input_panels_, call.w_ih, true, passed(call.w_ih_passed));
    }
    return;
  }
#ifdef FUSEDRNN_WITH_CUDA
  if (w.is_cuda() && call.steps.T > 1 && backend_ != Backend::kCudaPersistent)
    step_gemm_ = std::make_unique<cuda::StepGemm>(w, transposed, accumulate);
#endif
}

Recurrence::~Recurrence() = default;

void Recurrence::product(const void* in, int64_t rows, void* out) const {
  if (!in) return;
  if (packed_.defined()) return cpu::fused_product(dtype_of(w_), fused(in, rows, out));
#ifdef FUSEDRNN_WITH_CUDA
  if (step_gemm_) return step_gemm_->run(in, rows, out);
#endif
  const int64_t N = transposed_ ? w_.size(0) : w_.size(1);
  const int64_t K = transposed_ ? w_.size(1) : w_.size(0);
  gemm(w_, Gemm{rows, N, K, in, false, w_.data_ptr(), transposed_, out, accumulate_});
}

}  // namespace fusedrnn
