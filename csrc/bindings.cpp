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
#ifdef WITH_CUDA
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
}
