// The forward ops' C entry points for AOTInductor (aoti_shims.cpp): each op's name and its
// entry points' parameter list, as C source, for the declarations Inductor writes into a model.
#pragma once

#include <vector>

namespace fusedrnn {

struct AotiShim {
  const char* op;
  const char* parameters;
};

const std::vector<AotiShim>& aoti_shims();

}  // namespace fusedrnn
