// The framework-free kernel core: the argument struct of each cell's per-step pointwise kernel,
// and those kernels' entry points on the CPU (cpu/steps.cpp) and on CUDA (cuda/steps.cu). They
// never see an at::Tensor; layer/ does the GEMMs and calls them.
//
// Letters used in shape comments throughout csrc/:
//   T time steps, B batch rows, I input features, H hidden units.
// Gate blocks within a row follow torch.nn: LSTM [i | f | g | o], GRU [r | z | n], each H wide.
// Every buffer is contiguous and row-major.
#pragma once

#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace fusedrnn {

// Storage type of every buffer of one call. Arithmetic runs in float (double for kFloat64).
enum class Dtype { kFloat32, kFloat64, kFloat16, kBFloat16 };

struct LSTMForwardStep {
  void* gates;         // [B, 4H] in: pre-activations; out: activations i, f, g, o if save_gates
  const void* c_prev;  // [B, H]
  void* c;             // [B, H] out
  void* h;             // [B, H] out
  int64_t batch, hidden;
  bool save_gates;
};

struct LSTMBackwardStep {
  const void* gates;   // [B, 4H] activations saved by the forward
  const void* c;       // [B, H] c_t
  const void* c_prev;  // [B, H] c_{t-1}
  const void* dy;      // [B, H] gradient of output t, or null
  const void* dh;      // [B, H] gradient reaching h_t from step t+1
  void* dc;            // [B, H] in: gradient reaching c_t from step t+1; out: gradient of c_{t-1}
  void* dgates;        // [B, 4H] out: gradients of the pre-activations
  int64_t batch, hidden;
};

struct GRUForwardStep {
  const void* xg;      // [B, 3H] x W_ih^T + b_ih
  const void* hg;      // [B, 3H] h_{t-1} W_hh^T
  const void* b_hh;    // [3H], or null without bias
  const void* h_prev;  // [B, H]
  void* h;             // [B, H] out
  void* saved;         // [B, 4H] out: r, z, n, hn = h W_hn^T + b_hn for the backward; null
                       //        when not training
  int64_t batch, hidden;
};

struct GRUBackwardStep {
  const void* saved;   // [B, 4H] r, z, n, hn
  const void* h_prev;  // [B, H]
  const void* dy;      // [B, H] gradient of output t, or null
  void* dh;            // [B, H] in: gradient reaching h_t from step t+1; out: z * dh_total, the
                       //        part of dh_{t-1} that does not pass through W_hh
  void* dxg;           // [B, 3H] out: gradient of x W_ih^T + b_ih
  void* dhg;           // [B, 3H] out: gradient of h_{t-1} W_hh^T + b_hh
  int64_t batch, hidden;
};

struct RNNForwardStep {
  void* h;             // [B, H] in: pre-activation; out: h_t
  int64_t batch, hidden;
  bool relu;
};

struct RNNBackwardStep {
  const void* h;       // [B, H] h_t
  const void* dy;      // [B, H] gradient of output t, or null
  const void* dh;      // [B, H] gradient reaching h_t from step t+1
  void* dpre;          // [B, H] out: gradient of the pre-activation
  int64_t batch, hidden;
  bool relu;
};

// X(Args) for each per-step argument struct, for the explicit instantiations of templates over
// them.
#define FUSEDRNN_FOR_EACH_STEP(X) \
  X(LSTMForwardStep) X(LSTMBackwardStep) X(GRUForwardStep) X(GRUBackwardStep) X(RNNForwardStep) \
  X(RNNBackwardStep)

namespace cpu {
void step(Dtype dtype, const LSTMForwardStep& args);
void step(Dtype dtype, const LSTMBackwardStep& args);
void step(Dtype dtype, const GRUForwardStep& args);
void step(Dtype dtype, const GRUBackwardStep& args);
void step(Dtype dtype, const RNNForwardStep& args);
void step(Dtype dtype, const RNNBackwardStep& args);
// Hidden units [begin, end) of every row, on the calling thread alone (the fused recurrence of
// cpu/recurrence.h gives each thread its own slice of units).
template <typename Args> void step_units(Dtype dtype, const Args& args, int64_t begin, int64_t end);
}  // namespace cpu

namespace cuda {
void step(Dtype dtype, const LSTMForwardStep& args, cudaStream_t stream);
void step(Dtype dtype, const LSTMBackwardStep& args, cudaStream_t stream);
void step(Dtype dtype, const GRUForwardStep& args, cudaStream_t stream);
void step(Dtype dtype, const GRUBackwardStep& args, cudaStream_t stream);
void step(Dtype dtype, const RNNForwardStep& args, cudaStream_t stream);
void step(Dtype dtype, const RNNBackwardStep& args, cudaStream_t stream);
}  // namespace cuda

}  // namespace fusedrnn
