// The only CUDA file that includes torch: checks tensors, takes the current stream, and calls the
// torch-free launchers declared in the .cuh headers beside it.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

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

}  // namespace tltorch_ext
