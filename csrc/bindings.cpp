// The _C module: binds the CPU entry points always and the CUDA ones when built WITH_CUDA.
#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace tltorch_ext;
  m.def("bss_forward_cpu", &bss_forward_cpu, "BSS forward on CPU: (penalty, vectors)");
  m.def("bss_backward_cpu", &bss_backward_cpu, "BSS backward on CPU: grad_feature");
#ifdef WITH_CUDA
  m.def("bss_forward_cuda", &bss_forward_cuda, "BSS forward on CUDA: (penalty, vectors)");
  m.def("bss_backward_cuda", &bss_backward_cuda, "BSS backward on CUDA: grad_feature");
#endif
#ifdef WITH_CUDA
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
}
