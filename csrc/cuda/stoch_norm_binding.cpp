// StochNorm's CUDA kernels (stoch_norm.cu) as tltorch_ext_C::stoch_norm_* for CUDA tensors; the
// schemas and CPU kernels are in csrc/cpu/stoch_norm.cpp.
#include <ATen/Dispatch.h>

#include "binding_utils.h"
#include "stoch_norm.cuh"
#include "stoch_norm.h"

namespace tltorch_ext {
namespace {

using binding::cuda_ptr;

// The kernels' view of the call and their scratch (one acc_t tensor sized by the plan).
struct StochNormLaunch {
  cuda::StochNormShape shape;
  cuda::StochNormPlan plan;
  at::Tensor workspace;
  cudaStream_t stream;

  StochNormLaunch(const StochNormLayout& layout, const at::Tensor& input, at::ScalarType acc_dtype)
      : shape{layout.n, layout.c, layout.s, layout.channels_last},
        stream(binding::current_stream()) {
    C10_CUDA_CHECK(cuda::stoch_norm_plan(shape, &plan));
    workspace = at::empty({plan.workspace_elems}, input.options().dtype(acc_dtype));
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> stoch_norm_forward_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& running_mean,
    const at::Tensor& running_var, const at::Tensor& mask, double eps) {
  binding::check_cuda(x, "stoch_norm: x");
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
  binding::check_cuda(x, "stoch_norm: x");
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

std::tuple<at::Tensor, at::Tensor> stoch_norm_stats_cuda(const at::Tensor& x) {
  binding::check_cuda(x, "stoch_norm: x");
  const c10::cuda::CUDAGuard guard(x.device());
  const StochNormInput in(x);
  const StochNormLaunch launch(in.layout, in.input, in.acc_dtype);
  at::Tensor mean = in.new_channel_stat(), var = in.new_channel_stat();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.input.scalar_type(),
                                  "stoch_norm_stats_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    C10_CUDA_CHECK(cuda::stoch_norm_stats(launch.shape, launch.plan, cuda_ptr<scalar_t>(in.input),
                                          cuda_ptr<acc_t>(mean), cuda_ptr<acc_t>(var),
                                          cuda_ptr<acc_t>(launch.workspace), launch.stream));
  });
  return {mean, var};
}

at::Tensor stoch_norm_elemt_cuda(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                 const std::optional<at::Tensor>& bias,
                                 const at::Tensor& save_mean, const at::Tensor& save_invstd) {
  binding::check_cuda(x, "stoch_norm: x");
  const c10::cuda::CUDAGuard guard(x.device());
  const StochNormElemtArgs a(x, weight, bias, save_mean, save_invstd);
  const StochNormLaunch launch(a.layout, a.input, a.acc_dtype);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(),
                                  "stoch_norm_elemt_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    C10_CUDA_CHECK(cuda::stoch_norm_elemt(
        launch.shape, launch.plan, cuda_ptr<scalar_t>(a.input), cuda_ptr<acc_t>(a.weight),
        cuda_ptr<acc_t>(a.bias), cuda_ptr<acc_t>(a.save_mean), cuda_ptr<acc_t>(a.save_invstd),
        cuda_ptr<scalar_t>(a.y), cuda_ptr<acc_t>(launch.workspace), launch.stream));
  });
  return a.y;
}

std::tuple<at::Tensor, at::Tensor> stoch_norm_backward_reduce_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& save_mean,
    const at::Tensor& save_invstd) {
  binding::check_cuda(x, "stoch_norm: x");
  const c10::cuda::CUDAGuard guard(x.device());
  const StochNormBackwardReduceArgs a(grad_y, x, save_mean, save_invstd);
  const StochNormLaunch launch(a.layout, a.input, a.acc_dtype);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(),
                                  "stoch_norm_backward_reduce_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    C10_CUDA_CHECK(cuda::stoch_norm_backward_reduce(
        launch.shape, launch.plan, cuda_ptr<scalar_t>(a.grad_y), cuda_ptr<scalar_t>(a.input),
        cuda_ptr<acc_t>(a.save_mean), cuda_ptr<acc_t>(a.save_invstd), cuda_ptr<acc_t>(a.sum_dy),
        cuda_ptr<acc_t>(a.sum_dy_xhat), cuda_ptr<acc_t>(launch.workspace), launch.stream));
  });
  return a.outputs();
}

at::Tensor stoch_norm_backward_elemt_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                          const std::optional<at::Tensor>& weight,
                                          const at::Tensor& mask, const at::Tensor& save_mean,
                                          const at::Tensor& save_invstd,
                                          const at::Tensor& sum_dy,
                                          const at::Tensor& sum_dy_xhat, int64_t count) {
  binding::check_cuda(x, "stoch_norm: x");
  const c10::cuda::CUDAGuard guard(x.device());
  const StochNormBackwardElemtArgs a(grad_y, x, weight, mask, save_mean, save_invstd, sum_dy,
                                     sum_dy_xhat, count);
  const StochNormLaunch launch(a.layout, a.input, a.acc_dtype);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(),
                                  "stoch_norm_backward_elemt_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    C10_CUDA_CHECK(cuda::stoch_norm_backward_elemt(
        launch.shape, launch.plan, cuda_ptr<scalar_t>(a.grad_y), cuda_ptr<scalar_t>(a.input),
        cuda_ptr<acc_t>(a.weight), a.mask.data_ptr<bool>(), cuda_ptr<acc_t>(a.save_mean),
        cuda_ptr<acc_t>(a.save_invstd), cuda_ptr<acc_t>(a.sum_dy), cuda_ptr<acc_t>(a.sum_dy_xhat),
        a.count, cuda_ptr<scalar_t>(a.grad_x), cuda_ptr<acc_t>(launch.workspace), launch.stream));
  });
  return a.grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(tltorch_ext_C, CUDA, m) {
  m.impl("stoch_norm_forward", &stoch_norm_forward_cuda);
  m.impl("stoch_norm_backward", &stoch_norm_backward_cuda);
  m.impl("stoch_norm_stats", &stoch_norm_stats_cuda);
  m.impl("stoch_norm_elemt", &stoch_norm_elemt_cuda);
  m.impl("stoch_norm_backward_reduce", &stoch_norm_backward_reduce_cuda);
  m.impl("stoch_norm_backward_elemt", &stoch_norm_backward_elemt_cuda);
}

}  // namespace tltorch_ext
