// The only CUDA file that includes torch: checks tensors, takes the current stream, and calls the
// torch-free launchers declared in the .cuh headers beside it.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "bss.cuh"
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

}  // namespace tltorch_ext
