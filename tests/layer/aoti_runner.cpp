// An AOTInductor package run from C++ alone, as a server without Python runs one: the program
// loads fusedrnn's library (no Python in it), then the package, runs it on a float64 input read
// from a file and writes each result beside it. test_aoti_shims.py builds and runs it.
//
//   aoti_runner LIBRARY PACKAGE INPUT T B I OUTPUT_PREFIX [DEVICE]
//
// INPUT holds T*B*I float64 values, moved to DEVICE (default cpu) for the call; result k goes
// to OUTPUT_PREFIX<k>: its rank, its sizes, then its values, all as float64.
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

int main(int argc, char** argv) {
  if (argc != 8 && argc != 9) {
    std::fprintf(stderr, "usage: %s LIBRARY PACKAGE INPUT T B I OUTPUT_PREFIX [DEVICE]\n",
                 argv[0]);
    return 2;
  }
  // RTLD_GLOBAL: the package's code finds the entry points among the process's symbols.
  if (!dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL)) {
    std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
    return 3;
  }
  const std::vector<int64_t> sizes{std::atoll(argv[4]), std::atoll(argv[5]),
                                   std::atoll(argv[6])};
  at::Tensor input = at::empty(sizes, at::kDouble);
  FILE* in = std::fopen(argv[3], "rb");
  if (!in || std::fread(input.data_ptr<double>(), sizeof(double), input.numel(), in) !=
                 static_cast<size_t>(input.numel())) {
    std::fprintf(stderr, "could not read %s\n", argv[3]);
    return 4;
  }
  std::fclose(in);

  torch::inductor::AOTIModelPackageLoader loader(argv[2]);
  const std::vector<at::Tensor> results =
      loader.run({input.to(c10::Device(argc == 9 ? argv[8] : "cpu"))});
  for (size_t k = 0; k < results.size(); ++k) {
    const at::Tensor result = results[k].to(at::kCPU).contiguous();
    std::vector<double> header{static_cast<double>(result.dim())};
    for (const int64_t size : result.sizes()) header.push_back(static_cast<double>(size));
    FILE* out = std::fopen((std::string(argv[7]) + std::to_string(k)).c_str(), "wb");
    if (!out) return 5;
    std::fwrite(header.data(), sizeof(double), header.size(), out);
    std::fwrite(result.data_ptr<double>(), sizeof(double), result.numel(), out);
    std::fclose(out);
  }
  std::printf("%zu results\n", results.size());
  return 0;
}
