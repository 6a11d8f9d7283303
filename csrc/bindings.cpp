// The _C Python module. Loading it runs the TORCH_LIBRARY registrations beside each kernel
// (csrc/cpu/<op>.cpp, csrc/cuda/<op>_binding.cpp), which add the ops tltorch_ext_C::<op>_<fn>;
// the module itself only says whether the CUDA kernels were built.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef WITH_CUDA
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
}
