// The _C module: binds the CPU entry points always and the CUDA ones when built WITH_CUDA.
#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace tltorch_ext;
  m.def("fsp_matrix_cpu", &fsp_matrix_cpu);
  m.def("fsp_forward_cpu", &fsp_forward_cpu);
  m.def("fsp_backward_cpu", &fsp_backward_cpu);
  m.def("nst_forward_cpu", &nst_forward_cpu);
  m.def("nst_backward_cpu", &nst_backward_cpu);
#ifdef WITH_CUDA
  m.attr("WITH_CUDA") = true;
  m.def("fsp_matrix_cuda", &fsp_matrix_cuda);
  m.def("fsp_forward_cuda", &fsp_forward_cuda);
  m.def("fsp_backward_cuda", &fsp_backward_cuda);
  m.def("nst_forward_cuda", &nst_forward_cuda);
  m.def("nst_backward_cuda", &nst_backward_cuda);
#else
  m.attr("WITH_CUDA") = false;
#endif
}
