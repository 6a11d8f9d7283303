// Entry points of the compiled extension, one per kernel, taking and returning at::Tensor.
// Each is exposed to Python as <op>_<fn>_<backend> (see tltorch_ext/ops/_dispatch.py) with the
// same signature as the reference function tltorch_ext.reference.<op>.<fn>.
#pragma once
#include <torch/extension.h>

#include <optional>
#include <tuple>

namespace tltorch_ext {

// FSP (csrc/cpu/fsp.cpp): maps are (B, C, HW), any strides.
at::Tensor fsp_matrix_cpu(const at::Tensor& bot, const at::Tensor& top);
std::tuple<at::Tensor, at::Tensor> fsp_forward_cpu(const at::Tensor& bot_s, const at::Tensor& top_s,
                                                   const at::Tensor& bot_t, const at::Tensor& top_t,
                                                   bool keep_diff);
at::Tensor fsp_backward_cpu(const at::Tensor& m, const at::Tensor& x, bool transpose_m,
                            double alpha, const std::optional<at::Tensor>& grad);

// NST (csrc/cpu/nst.cpp).
std::tuple<at::Tensor, at::Tensor, at::Tensor> nst_forward_cpu(const at::Tensor& f_s,
                                                               const at::Tensor& f_t, bool spatial);
std::tuple<at::Tensor, at::Tensor> nst_backward_cpu(const at::Tensor& grad, const at::Tensor& f_s,
                                                    const at::Tensor& f_t, const at::Tensor& norm_s,
                                                    const at::Tensor& norm_t, bool spatial,
                                                    bool need_s, bool need_t);

#ifdef WITH_CUDA
// FSP and NST (csrc/cuda/bindings_cuda.cpp over csrc/cuda/fsp.cu, nst.cu).
at::Tensor fsp_matrix_cuda(const at::Tensor& bot, const at::Tensor& top);
std::tuple<at::Tensor, at::Tensor> fsp_forward_cuda(const at::Tensor& bot_s,
                                                    const at::Tensor& top_s,
                                                    const at::Tensor& bot_t,
                                                    const at::Tensor& top_t, bool keep_diff);
at::Tensor fsp_backward_cuda(const at::Tensor& m, const at::Tensor& x, bool transpose_m,
                             double alpha, const std::optional<at::Tensor>& grad);
std::tuple<at::Tensor, at::Tensor, at::Tensor> nst_forward_cuda(const at::Tensor& f_s,
                                                                const at::Tensor& f_t,
                                                                bool spatial);
std::tuple<at::Tensor, at::Tensor> nst_backward_cuda(const at::Tensor& grad, const at::Tensor& f_s,
                                                     const at::Tensor& f_t,
                                                     const at::Tensor& norm_s,
                                                     const at::Tensor& norm_t, bool spatial,
                                                     bool need_s, bool need_t);
#endif

}  // namespace tltorch_ext
