#include "persistent_model.h"

#include <c10/util/Exception.h>

#include <vector>

namespace fusedrnn {
namespace cpu {
namespace {

using persistent::kBatchTile;
using persistent::kRowTile;
using persistent::LoopArgs;

template <typename T, typename Args>
void model(const LoopArgs<Args>& a, int blocks) {
  using A = typename AccumulateType<T>::type;
  const int K = int(a.K), k_padded = a.k_padded;
  std::vector<std::vector<A>> slices(blocks, std::vector<A>(size_t(a.rows) * k_padded));
  for (int block = 0; block < blocks; ++block)
    for (int r = 0; r < a.rows; ++r) {
      const int64_t column = persistent::column_of(a, block, r);
      for (int k = 0; k < k_padded; ++k)
        slices[block][size_t(r) * k_padded + k] =
            column >= 0 && k < K ? persistent::weight<T, A>(a, column, k) : A(0);
    }
  std::vector<A> state(size_t(a.batch_chunk) * k_padded);
  const int row_tiles = a.rows / kRowTile, batch_tiles = a.batch_chunk / kBatchTile;
  const int64_t width = a.gates * a.units;
  A sums[32][kRowTile][kBatchTile];
  for (int64_t s = 0; s < a.count; ++s) {
    const Step<Args>& step = a.steps[s];
    for (int block = 0; block < blocks && step.in; ++block) {
      const T* in = static_cast<const T*>(step.in);
      T* out = static_cast<T*>(step.out);
      for (int b0 = 0; b0 < step.rows; b0 += a.batch_chunk) {
        const int chunk_rows = int(std::min<int64_t>(a.batch_chunk, step.rows - b0));
        for (int b = 0; b < a.batch_chunk; ++b)
          for (int k = 0; k < k_padded; ++k)
            state[size_t(b) * k_padded + k] =
                b < chunk_rows && k < K ? load<A>(in + int64_t(b0 + b) * K + k) : A(0);
        for (int tile = 0; tile < row_tiles * batch_tiles; ++tile) {
          const int r0 = tile % row_tiles * kRowTile, bt = tile / row_tiles * kBatchTile;
          for (int lane = 0; lane < 32; ++lane)
            persistent::lane_sums(slices[block].data() + size_t(r0) * k_padded,
                                  state.data() + size_t(bt) * k_padded, k_padded, lane,
                                  sums[lane]);
          for (int lane = 0; lane < 32; ++lane) {  // the lane that stores tile element `lane`
            const int r = lane / kBatchTile, b = lane % kBatchTile;
            A values[32];
            for (int l = 0; l < 32; ++l) values[l] = sums[l][r][b];
            for (int offset = 16; offset >= 1; offset /= 2) {  // __shfl_xor_sync's butterfly
              A next[32];
              for (int l = 0; l < 32; ++l) next[l] = values[l] + values[l ^ offset];
              std::copy(next, next + 32, values);
            }
            const int64_t column = persistent::column_of(a, block, r0 + r);
            if (column >= 0 && bt + b < chunk_rows) {
              T* o = out + int64_t(b0 + bt + b) * width + column;
              store(o, a.accumulate ? values[lane] + load<A>(o) : values[lane]);
            }
          }
        }
      }
    }
    for (int block = 0; block < blocks; ++block) {
      const int64_t first_unit = int64_t(block) * a.units_per_block;
      const int64_t units_here = std::min<int64_t>(a.units_per_block, a.units - first_unit);
      for (int64_t b = 0; b < step.args.batch; ++b)
        for (int64_t u = 0; u < units_here; ++u) element<T, A>(step.args, b, first_unit + u);
    }
  }
}

template <typename Args>
void dispatch(Dtype dtype, const LoopArgs<Args>& args, int blocks) {
  switch (dtype) {
    case Dtype::kFloat32: return model<float>(args, blocks);
    case Dtype::kFloat64: return model<double>(args, blocks);
    default: TORCH_CHECK(false, "fusedrnn: the persistent model runs float32 and float64");
  }
}

}  // namespace

#define FUSEDRNN_DEFINE_PERSISTENT_MODEL(Args)                                          \
  void persistent_model(Dtype dtype, const LoopArgs<Args>& args, int blocks) {          \
    dispatch(dtype, args, blocks);                                                      \
  }
FUSEDRNN_FOR_EACH_STEP(FUSEDRNN_DEFINE_PERSISTENT_MODEL)
#undef FUSEDRNN_DEFINE_PERSISTENT_MODEL

}  // namespace cpu
}  // namespace fusedrnn
