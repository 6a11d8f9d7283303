// StochNorm CUDA kernels (docs/api_stochnorm.md), torch-free: plain pointers, sizes and a stream.
//
// x is viewed as (N, C, S), S the product of the trailing sizes, stored channel-major per sample
// (offset (n·C + c)·S + s) or channels-last (offset (n·S + s)·C + c). Per-channel tensors
// (weight, bias, running and saved statistics, coefficients) are in the accumulation type acc_t:
// float for float/__half/__nv_bfloat16 data, double for double. weight and bias may be null
// (γ = 1, β = 0). The mask is one bool per channel: true = batch statistics.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace tltorch_ext::cuda {

struct StochNormShape {
  int64_t n, c, s;
  bool channels_last;
};

// How the reduction passes split each channel's N·S values, and the scratch they need.
struct StochNormPlan {
  int splits;               // blocks per channel (group) along N·S, ≤ 65535
  int sm_count;             // of the current device
  int64_t workspace_elems;  // acc_t elements of scratch for forward or backward
};

// Fills `plan` for the current device.
cudaError_t stoch_norm_plan(const StochNormShape& shape, StochNormPlan* plan);

// y = γ·(x − μ_c)·invstd_c + β with (μ_c, σ²_c) the batch statistics where mask[c], else the
// running ones; writes the statistics used (save_mean, save_invstd) and the biased batch ones.
template <typename scalar_t, typename acc_t>
cudaError_t stoch_norm_forward(const StochNormShape& shape, const StochNormPlan& plan,
                               const scalar_t* x, const acc_t* weight, const acc_t* bias,
                               const acc_t* running_mean, const acc_t* running_var,
                               const bool* mask, double eps, scalar_t* y, acc_t* save_mean,
                               acc_t* save_invstd, acc_t* batch_mean, acc_t* batch_var,
                               acc_t* workspace, cudaStream_t stream);

// grad_x = γ·invstd·(dy − s·mean(dy) − x̂·s·mean(dy·x̂)), x̂ = (x − μ)·invstd, s = mask[c];
// grad_weight = Σdy·x̂, grad_bias = Σdy.
template <typename scalar_t, typename acc_t>
cudaError_t stoch_norm_backward(const StochNormShape& shape, const StochNormPlan& plan,
                                const scalar_t* grad_y, const scalar_t* x, const acc_t* weight,
                                const bool* mask, const acc_t* save_mean,
                                const acc_t* save_invstd, scalar_t* grad_x, acc_t* grad_weight,
                                acc_t* grad_bias, acc_t* workspace, cudaStream_t stream);

// The phases (docs/api_stochnorm.md), which the two above are composed of; `workspace` as the
// plan sizes it.
// Biased per-channel batch mean and variance of x.
template <typename scalar_t, typename acc_t>
cudaError_t stoch_norm_stats(const StochNormShape& shape, const StochNormPlan& plan,
                             const scalar_t* x, acc_t* mean, acc_t* var, acc_t* workspace,
                             cudaStream_t stream);

// y = γ·(x − save_mean)·save_invstd + β.
template <typename scalar_t, typename acc_t>
cudaError_t stoch_norm_elemt(const StochNormShape& shape, const StochNormPlan& plan,
                             const scalar_t* x, const acc_t* weight, const acc_t* bias,
                             const acc_t* save_mean, const acc_t* save_invstd, scalar_t* y,
                             acc_t* workspace, cudaStream_t stream);

// sum_dy = Σdy, sum_dy_xhat = Σdy·x̂ per channel.
template <typename scalar_t, typename acc_t>
cudaError_t stoch_norm_backward_reduce(const StochNormShape& shape, const StochNormPlan& plan,
                                       const scalar_t* grad_y, const scalar_t* x,
                                       const acc_t* save_mean, const acc_t* save_invstd,
                                       acc_t* sum_dy, acc_t* sum_dy_xhat, acc_t* workspace,
                                       cudaStream_t stream);

// grad_x = γ·invstd·(dy − s·sum_dy/count − x̂·s·sum_dy_xhat/count), the sums and count being
// over every value the statistics came from (a process group's, for SyncStochNorm).
template <typename scalar_t, typename acc_t>
cudaError_t stoch_norm_backward_elemt(const StochNormShape& shape, const StochNormPlan& plan,
                                      const scalar_t* grad_y, const scalar_t* x,
                                      const acc_t* weight, const bool* mask,
                                      const acc_t* save_mean, const acc_t* save_invstd,
                                      const acc_t* sum_dy, const acc_t* sum_dy_xhat,
                                      int64_t count, scalar_t* grad_x, acc_t* workspace,
                                      cudaStream_t stream);

#define TLTORCH_EXT_STOCH_NORM_EXTERN(scalar_t, acc_t)                                          \
  extern template cudaError_t stoch_norm_forward<scalar_t, acc_t>(                              \
      const StochNormShape&, const StochNormPlan&, const scalar_t*, const acc_t*, const acc_t*, \
      const acc_t*, const acc_t*, const bool*, double, scalar_t*, acc_t*, acc_t*, acc_t*,        \
      acc_t*, acc_t*, cudaStream_t);                                                            \
  extern template cudaError_t stoch_norm_backward<scalar_t, acc_t>(                             \
      const StochNormShape&, const StochNormPlan&, const scalar_t*, const scalar_t*,            \
      const acc_t*, const bool*, const acc_t*, const acc_t*, scalar_t*, acc_t*, acc_t*, acc_t*, \
      cudaStream_t);                                                                            \
  extern template cudaError_t stoch_norm_stats<scalar_t, acc_t>(                                \
      const StochNormShape&, const StochNormPlan&, const scalar_t*, acc_t*, acc_t*, acc_t*,     \
      cudaStream_t);                                                                            \
  extern template cudaError_t stoch_norm_elemt<scalar_t, acc_t>(                                \
      const StochNormShape&, const StochNormPlan&, const scalar_t*, const acc_t*, const acc_t*, \
      const acc_t*, const acc_t*, scalar_t*, acc_t*, cudaStream_t);                             \
  extern template cudaError_t stoch_norm_backward_reduce<scalar_t, acc_t>(                      \
      const StochNormShape&, const StochNormPlan&, const scalar_t*, const scalar_t*,            \
      const acc_t*, const acc_t*, acc_t*, acc_t*, acc_t*, cudaStream_t);                        \
  extern template cudaError_t stoch_norm_backward_elemt<scalar_t, acc_t>(                       \
      const StochNormShape&, const StochNormPlan&, const scalar_t*, const scalar_t*,            \
      const acc_t*, const bool*, const acc_t*, const acc_t*, const acc_t*, const acc_t*,        \
      int64_t, scalar_t*, acc_t*, cudaStream_t);
TLTORCH_EXT_STOCH_NORM_EXTERN(float, float)
TLTORCH_EXT_STOCH_NORM_EXTERN(__half, float)
TLTORCH_EXT_STOCH_NORM_EXTERN(__nv_bfloat16, float)
TLTORCH_EXT_STOCH_NORM_EXTERN(double, double)
#undef TLTORCH_EXT_STOCH_NORM_EXTERN

}  // namespace tltorch_ext::cuda
