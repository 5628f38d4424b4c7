// AOTInductor packages served from C++ without Python, timed against each other in one process:
// rounds in a shuffled order, each call timed alone after warm-up. cpp_serving.py builds the
// packages and this program, and reads what it prints.
//
//   cpp_serving LIBRARY SECONDS T B I PACKAGE...
//
// Every package takes one float32 input of T x B x I (fresh normal numbers) and must give the
// first package's results to 1e-4. Prints one JSON object: each package's call times in us.
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/randn.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  if (argc < 7) {
    std::fprintf(stderr, "usage: %s LIBRARY SECONDS T B I PACKAGE...\n", argv[0]);
    return 2;
  }
  if (!dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL)) {
    std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
    return 3;
  }
  const double seconds = std::atof(argv[2]);
  const at::Tensor input = at::randn({std::atoll(argv[3]), std::atoll(argv[4]),
                                      std::atoll(argv[5])});
  std::vector<std::unique_ptr<torch::inductor::AOTIModelPackageLoader>> packages;
  for (int i = 6; i < argc; ++i)
    packages.push_back(std::make_unique<torch::inductor::AOTIModelPackageLoader>(argv[i]));

  const std::vector<at::Tensor> expected = packages[0]->run({input});
  for (size_t p = 1; p < packages.size(); ++p) {
    const std::vector<at::Tensor> got = packages[p]->run({input});
    for (size_t k = 0; k < expected.size(); ++k)
      if (!got[k].allclose(expected[k], 1e-4, 1e-5)) {
        std::fprintf(stderr, "%s: result %zu differs from %s's\n", argv[6 + p], k, argv[6]);
        return 4;
      }
  }

  std::vector<std::vector<double>> times(packages.size());
  std::vector<size_t> order(packages.size());
  for (size_t p = 0; p < order.size(); ++p) order[p] = p;
  std::mt19937 shuffle(0);
  constexpr int kWarmupRounds = 20, kLeastTimedRounds = 3;  // quartiles need a few
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  for (int round = 0; round < kWarmupRounds + kLeastTimedRounds || Clock::now() < end;
       ++round) {
    std::shuffle(order.begin(), order.end(), shuffle);
    for (const size_t p : order) {
      const auto start = Clock::now();
      const std::vector<at::Tensor> results = packages[p]->run({input});
      const double us = std::chrono::duration<double, std::micro>(Clock::now() - start).count();
      if (round >= kWarmupRounds) times[p].push_back(us);
    }
  }

  std::printf("{");
  for (size_t p = 0; p < packages.size(); ++p) {
    std::printf("%s\"%s\": [", p ? ", " : "", argv[6 + p]);
    for (size_t r = 0; r < times[p].size(); ++r) std::printf("%s%.3f", r ? ", " : "", times[p][r]);
    std::printf("]");
  }
  std::printf("}\n");
  return 0;
}
