// The _C module: binds the CPU entry points always and the CUDA ones when built WITH_CUDA.
#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace tltorch_ext;
  m.def("stoch_norm_forward_cpu", &stoch_norm_forward_cpu,
        "StochNorm forward on CPU: (y, save_mean, save_invstd, batch_mean, batch_var)");
  m.def("stoch_norm_backward_cpu", &stoch_norm_backward_cpu,
        "StochNorm backward on CPU: (grad_x, grad_weight, grad_bias)");
#ifdef WITH_CUDA
  m.def("stoch_norm_forward_cuda", &stoch_norm_forward_cuda,
        "StochNorm forward on CUDA: (y, save_mean, save_invstd, batch_mean, batch_var)");
  m.def("stoch_norm_backward_cuda", &stoch_norm_backward_cuda,
        "StochNorm backward on CUDA: (grad_x, grad_weight, grad_bias)");
#endif
  m.def("bss_forward_cpu", &bss_forward_cpu, "BSS forward on CPU: (penalty, vectors)");
  m.def("bss_backward_cpu", &bss_backward_cpu, "BSS backward on CPU: grad_feature");
#ifdef WITH_CUDA
  m.def("bss_forward_cuda", &bss_forward_cuda, "BSS forward on CUDA: (penalty, vectors)");
  m.def("bss_backward_cuda", &bss_backward_cuda, "BSS backward on CUDA: grad_feature");
#endif
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
