// FSP's CUDA kernels (fsp.cu) as tltorch_ext_C::fsp_* for CUDA tensors; the schemas and CPU kernels
// are in csrc/cpu/fsp.cpp.
#include "binding_utils.h"
#include "fsp.cuh"

namespace tltorch_ext {
namespace {

using binding::check;
using binding::current_stream;
using binding::dtype_of;
using binding::feature_maps;
using binding::workspace;

at::Tensor fsp_matrix_cuda(const at::Tensor& bot, const at::Tensor& top) {
  const c10::cuda::CUDAGuard guard(top.device());
  const auto bot_maps = feature_maps(bot, "bot"), top_maps = feature_maps(top, "top");
  at::Tensor out = at::empty({top.size(0), top.size(1), bot.size(1)}, top.options());
  check(cuda::fsp_matrix(bot_maps, top_maps, top.size(0), out.data_ptr(), current_stream()),
        "fsp_matrix");
  return out;
}

std::tuple<at::Tensor, at::Tensor> fsp_forward_cuda(const at::Tensor& bot_s,
                                                    const at::Tensor& top_s,
                                                    const at::Tensor& bot_t,
                                                    const at::Tensor& top_t, bool keep_diff) {
  const c10::cuda::CUDAGuard guard(top_s.device());
  const int64_t batch = top_s.size(0), c_top = top_s.size(1), c_bot = bot_s.size(1);
  const auto acc = top_s.options().dtype(at::toOpMathType(top_s.scalar_type()));
  at::Tensor loss = at::empty({}, top_s.options());
  at::Tensor diff = keep_diff ? at::empty({batch, c_top, c_bot}, acc) : at::empty({0}, acc);
  at::Tensor work = workspace(
      cuda::fsp_loss_workspace(batch, c_top, c_bot, top_s.scalar_type() == at::kDouble), top_s);
  check(cuda::fsp_loss(feature_maps(bot_s, "bot_s"), feature_maps(top_s, "top_s"),
                       feature_maps(bot_t, "bot_t"), feature_maps(top_t, "top_t"), batch,
                       loss.data_ptr(), keep_diff ? diff.data_ptr() : nullptr, work.data_ptr(),
                       current_stream()),
        "fsp_loss");
  return {loss, diff};
}

at::Tensor fsp_backward_cuda(const at::Tensor& m, const at::Tensor& x, bool transpose_m,
                             double alpha, const std::optional<at::Tensor>& grad) {
  const c10::cuda::CUDAGuard guard(x.device());
  TORCH_CHECK(m.dim() == 3 && m.size(0) == x.size(0) && m.is_cuda(),
              "m must be a (B, R, J) CUDA tensor matching x, got ", m.sizes());
  TORCH_CHECK((transpose_m ? m.size(1) : m.size(2)) == x.size(1), "m's inner size ", m.sizes(),
              " does not match x ", x.sizes());
  const at::Tensor m_c = m.contiguous();
  const at::Tensor scale =
      grad.has_value() ? grad->to(at::toOpMathType(x.scalar_type())).contiguous() : at::Tensor();
  const int64_t rows = transpose_m ? m.size(2) : m.size(1);
  at::Tensor out = at::empty({x.size(0), rows, x.size(2)}, x.options());
  check(cuda::fsp_apply(m_c.data_ptr(), dtype_of(m_c.scalar_type()), transpose_m, rows,
                        feature_maps(x, "x"), x.size(0), alpha,
                        scale.defined() ? scale.data_ptr() : nullptr, out.data_ptr(),
                        current_stream()),
        "fsp_apply");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(tltorch_ext_C, CUDA, m) {
  m.impl("fsp_matrix", &fsp_matrix_cuda);
  m.impl("fsp_forward", &fsp_forward_cuda);
  m.impl("fsp_backward", &fsp_backward_cuda);
}

}  // namespace tltorch_ext
