// The only CUDA file that includes torch: checks tensors, takes the current stream, and calls the
// torch-free launchers declared in the .cuh headers beside it.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "bss.cuh"
#include "fsp.cuh"
#include "nst.cuh"
#include "ops.h"
#include "stoch_norm.cuh"

namespace tltorch_ext {
namespace {

// The CUDA type of a torch scalar type (same layout).
template <typename T>
struct CudaType {
  using type = T;
};
template <>
struct CudaType<at::Half> {
  using type = __half;
};
template <>
struct CudaType<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
auto* cuda_ptr(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<typename CudaType<T>::type*>(t.data_ptr<T>()) : nullptr;
}

// ---- StochNorm -------------------------------------------------------------------------------

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "stoch_norm_*_cuda: ", name, " must be a CUDA tensor, got ",
              t.device());
}

// The kernels' view of the call and their scratch (one acc_t tensor sized by the plan).
struct StochNormLaunch {
  cuda::StochNormShape shape;
  cuda::StochNormPlan plan;
  at::Tensor workspace;
  cudaStream_t stream;

  StochNormLaunch(const StochNormLayout& layout, const at::Tensor& input, at::ScalarType acc_dtype)
      : shape{layout.n, layout.c, layout.s, layout.channels_last},
        stream(c10::cuda::getCurrentCUDAStream()) {
    C10_CUDA_CHECK(cuda::stoch_norm_plan(shape, &plan));
    workspace = at::empty({plan.workspace_elems}, input.options().dtype(acc_dtype));
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> stoch_norm_forward_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& running_mean,
    const at::Tensor& running_var, const at::Tensor& mask, double eps) {
  check_cuda(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const StochNormForwardArgs a(x, weight, bias, running_mean, running_var, mask);
  const StochNormLaunch launch(a.layout, a.input, a.acc_dtype);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(),
                                  "stoch_norm_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    C10_CUDA_CHECK(cuda::stoch_norm_forward(
        launch.shape, launch.plan, cuda_ptr<scalar_t>(a.input), cuda_ptr<acc_t>(a.weight),
        cuda_ptr<acc_t>(a.bias), cuda_ptr<acc_t>(a.running_mean), cuda_ptr<acc_t>(a.running_var),
        a.mask.data_ptr<bool>(), eps, cuda_ptr<scalar_t>(a.y), cuda_ptr<acc_t>(a.save_mean),
        cuda_ptr<acc_t>(a.save_invstd), cuda_ptr<acc_t>(a.batch_mean),
        cuda_ptr<acc_t>(a.batch_var), cuda_ptr<acc_t>(launch.workspace), launch.stream));
  });
  return a.outputs();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> stoch_norm_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const at::Tensor& mask, const at::Tensor& save_mean, const at::Tensor& save_invstd) {
  check_cuda(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const StochNormBackwardArgs a(grad_y, x, weight, mask, save_mean, save_invstd);
  const StochNormLaunch launch(a.layout, a.input, a.acc_dtype);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(),
                                  "stoch_norm_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    C10_CUDA_CHECK(cuda::stoch_norm_backward(
        launch.shape, launch.plan, cuda_ptr<scalar_t>(a.grad_y), cuda_ptr<scalar_t>(a.input),
        cuda_ptr<acc_t>(a.weight), a.mask.data_ptr<bool>(), cuda_ptr<acc_t>(a.save_mean),
        cuda_ptr<acc_t>(a.save_invstd), cuda_ptr<scalar_t>(a.grad_x),
        cuda_ptr<acc_t>(a.grad_weight), cuda_ptr<acc_t>(a.grad_bias),
        cuda_ptr<acc_t>(launch.workspace), launch.stream));
  });
  return a.outputs();
}

// ---- BSS -------------------------------------------------------------------------------------
namespace {

bss::DType bss_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return bss::DType::kFloat32;
    case at::kDouble: return bss::DType::kFloat64;
    case at::kHalf: return bss::DType::kFloat16;
    case at::kBFloat16: return bss::DType::kBFloat16;
    default: break;
  }
  TORCH_CHECK(false, "bss: unsupported dtype ", t);
}

// The Gram side A of a contiguous (n, b, d) feature: F (m = b) when b <= d, else Fᵀ (m = d).
struct BssSide {
  int64_t m, length;
  bss::Strided a;
};

BssSide bss_side(const at::Tensor& feature) {
  const int64_t b = feature.size(1), d = feature.size(2);
  if (b <= d) return {b, d, {b * d, d, 1}};
  return {d, b, {b * d, 1, d}};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> bss_forward_cuda(const at::Tensor& feature_, int64_t k) {
  bss_check_forward(feature_, k);
  TORCH_CHECK(feature_.is_cuda(), "bss_forward_cuda: feature must be a CUDA tensor, got ",
              feature_.device());
  const c10::cuda::CUDAGuard guard(feature_.device());
  const at::Tensor feature = feature_.contiguous();
  const BssSide side = bss_side(feature);
  const int64_t batch = feature.size(0);
  const at::ScalarType dtype = feature.scalar_type(), acc = at::toOpMathType(dtype);
  const auto float64 = feature.options().dtype(at::kDouble);
  at::Tensor penalty = at::empty({batch}, feature.options());
  at::Tensor vectors = at::empty({batch, side.m, k}, feature.options().dtype(acc));
  if (batch == 0) return {penalty, vectors};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor gram = at::empty({batch, side.m, side.m}, float64);
  C10_CUDA_CHECK(bss::launch_gram(feature.const_data_ptr(), bss_dtype(dtype), side.a, batch, side.m,
                                  side.length, gram.mutable_data_ptr<double>(), stream));
  if (side.m > bss::kMaxJacobi) return bss_smallest_by_eigh(gram, k, dtype, acc);
  bool in_shared = false;
  C10_CUDA_CHECK(bss::jacobi_packs_in_shared(side.m, &in_shared));
  at::Tensor log = at::empty({batch, bss::jacobi_log_elements(side.m)}, float64);
  at::Tensor packed =
      in_shared ? at::Tensor() : at::empty({batch, bss::jacobi_packed_elements(side.m)}, float64);
  C10_CUDA_CHECK(bss::launch_jacobi(
      gram.const_data_ptr<double>(), batch, side.m, k, log.mutable_data_ptr<double>(),
      in_shared ? nullptr : packed.mutable_data_ptr<double>(), penalty.mutable_data_ptr(),
      bss_dtype(dtype), vectors.mutable_data_ptr(), bss_dtype(acc), stream));
  return {penalty, vectors};
}

at::Tensor bss_backward_cuda(const at::Tensor& grad_penalty, const at::Tensor& feature_,
                             const at::Tensor& vectors_) {
  bss_check_backward(grad_penalty, feature_, vectors_);
  TORCH_CHECK(feature_.is_cuda(), "bss_backward_cuda: feature must be a CUDA tensor, got ",
              feature_.device());
  const c10::cuda::CUDAGuard guard(feature_.device());
  const at::Tensor feature = feature_.contiguous();
  const at::Tensor vectors = vectors_.contiguous();
  const BssSide side = bss_side(feature);
  const int64_t batch = feature.size(0), k = vectors.size(2);
  at::Tensor grad = at::empty_like(feature);
  if (grad.numel() == 0) return grad;
  const at::Tensor scale = (grad_penalty * 2).to(vectors.scalar_type()).contiguous();
  at::Tensor workspace = at::empty({batch, k, side.length}, vectors.options());
  C10_CUDA_CHECK(bss::launch_backward(
      feature.const_data_ptr(), bss_dtype(feature.scalar_type()), side.a, batch, side.m,
      side.length, vectors.const_data_ptr(), k, scale.const_data_ptr(),
      workspace.mutable_data_ptr(), grad.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream()));
  return grad;
}
// ---- end BSS ---------------------------------------------------------------------------------

// ---- FSP and NST -------------------------------------------------------------------------------
namespace {

cuda::DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf:
      return cuda::DType::kHalf;
    case at::kBFloat16:
      return cuda::DType::kBFloat16;
    case at::kFloat:
      return cuda::DType::kFloat;
    case at::kDouble:
      return cuda::DType::kDouble;
    default:
      TORCH_CHECK(false, "expected a float16, bfloat16, float32 or float64 tensor, got ",
                  t.scalar_type());
  }
}

cuda::FeatureMaps feature_maps(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 3, name, " must be (B, C, HW), got shape ", t.sizes());
  cuda::FeatureMaps maps;
  maps.data = t.data_ptr();
  maps.dtype = dtype_of(t);
  maps.batch_stride = t.stride(0);
  maps.channel_stride = t.stride(1);
  maps.position_stride = t.stride(2);
  maps.channels = t.size(1);
  maps.positions = t.size(2);
  return maps;
}

at::ScalarType acc_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

void check(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, what, " failed: ", cudaGetErrorString(status));
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace

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
  const auto acc = top_s.options().dtype(acc_type(top_s));
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
  const at::Tensor scale = grad.has_value() ? grad->to(acc_type(x)).contiguous() : at::Tensor();
  const int64_t rows = transpose_m ? m.size(2) : m.size(1);
  at::Tensor out = at::empty({x.size(0), rows, x.size(2)}, x.options());
  check(cuda::fsp_apply(m_c.data_ptr(), dtype_of(m_c), transpose_m, rows, feature_maps(x, "x"),
                        x.size(0), alpha, scale.defined() ? scale.data_ptr() : nullptr,
                        out.data_ptr(), current_stream()),
        "fsp_apply");
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> nst_forward_cuda(const at::Tensor& f_s,
                                                                const at::Tensor& f_t,
                                                                bool spatial) {
  const c10::cuda::CUDAGuard guard(f_s.device());
  const auto s = feature_maps(f_s, "f_s"), t = feature_maps(f_t, "f_t");
  TORCH_CHECK(f_t.size(0) == f_s.size(0) && f_t.size(2) == f_s.size(2), "f_t ", f_t.sizes(),
              " does not match f_s ", f_s.sizes());
  const int64_t batch = f_s.size(0);
  const auto acc = f_s.options().dtype(acc_type(f_s));
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
  const at::ScalarType acc = acc_type(f_s);
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

}  // namespace tltorch_ext
