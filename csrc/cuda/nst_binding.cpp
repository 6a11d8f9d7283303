// NST's CUDA kernels (nst.cu) as tltorch_ext_C::nst_* for CUDA tensors; the schemas and CPU kernels
// are in csrc/cpu/nst.cpp.
#include "binding_utils.h"
#include "nst.cuh"

namespace tltorch_ext {
namespace {

using binding::check;
using binding::current_stream;
using binding::dtype_of;
using binding::feature_maps;
using binding::workspace;

std::tuple<at::Tensor, at::Tensor, at::Tensor> nst_forward_cuda(const at::Tensor& f_s,
                                                                const at::Tensor& f_t,
                                                                bool spatial) {
  const c10::cuda::CUDAGuard guard(f_s.device());
  const auto s = feature_maps(f_s, "f_s"), t = feature_maps(f_t, "f_t");
  TORCH_CHECK(f_t.size(0) == f_s.size(0) && f_t.size(2) == f_s.size(2), "f_t ", f_t.sizes(),
              " does not match f_s ", f_s.sizes());
  const int64_t batch = f_s.size(0);
  const auto acc = f_s.options().dtype(at::toOpMathType(f_s.scalar_type()));
  at::Tensor loss = at::empty({}, f_s.options());
  at::Tensor norm_s = at::empty({batch, f_s.size(1)}, acc);
  at::Tensor norm_t = at::empty({batch, f_t.size(1)}, acc);
  at::Tensor work = workspace(cuda::nst_forward_workspace(batch, s.channels, t.channels,
                                                          s.positions, spatial,
                                                          f_s.scalar_type() == at::kDouble),
                              f_s);
  check(cuda::nst_forward(s, t, batch, spatial, loss.data_ptr(), norm_s.data_ptr(),
                          norm_t.data_ptr(), work.data_ptr(), current_stream()),
        "nst_forward");
  return {loss, norm_s, norm_t};
}

std::tuple<at::Tensor, at::Tensor> nst_backward_cuda(const at::Tensor& grad, const at::Tensor& f_s,
                                                     const at::Tensor& f_t,
                                                     const at::Tensor& norm_s,
                                                     const at::Tensor& norm_t, bool spatial,
                                                     bool need_s, bool need_t) {
  const c10::cuda::CUDAGuard guard(f_s.device());
  const auto s = feature_maps(f_s, "f_s"), t = feature_maps(f_t, "f_t");
  const at::ScalarType acc = at::toOpMathType(f_s.scalar_type());
  TORCH_CHECK(norm_s.scalar_type() == acc && norm_s.is_contiguous() && norm_s.is_cuda() &&
                  norm_t.scalar_type() == acc && norm_t.is_contiguous() && norm_t.is_cuda(),
              "norm_s and norm_t must be contiguous CUDA ", acc, " tensors");
  const int64_t batch = f_s.size(0);
  const at::Tensor scale = grad.to(acc).contiguous();
  const auto gradient = [](bool needed, const at::Tensor& f) {
    return needed ? at::empty(f.sizes(), f.options()) : at::empty({0}, f.options());
  };
  at::Tensor grad_s = gradient(need_s, f_s), grad_t = gradient(need_t, f_t);
  at::Tensor work = workspace(
      cuda::nst_backward_workspace(batch, s.channels, t.channels, s.positions, spatial, need_s,
                                   need_t, acc == at::kDouble),
      f_s);
  check(cuda::nst_backward(s, t, batch, norm_s.data_ptr(), norm_t.data_ptr(), spatial,
                           scale.data_ptr(), need_s ? grad_s.data_ptr() : nullptr,
                           need_t ? grad_t.data_ptr() : nullptr, work.data_ptr(),
                           current_stream()),
        "nst_backward");
  return {grad_s, grad_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(tltorch_ext_C, CUDA, m) {
  m.impl("nst_forward", &nst_forward_cuda);
  m.impl("nst_backward", &nst_backward_cuda);
}

}  // namespace tltorch_ext
