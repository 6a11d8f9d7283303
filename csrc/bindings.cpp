// The _C module: binds the CPU entry points always and the CUDA ones when built WITH_CUDA.
#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace tltorch_ext;
#ifdef WITH_CUDA
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
}
