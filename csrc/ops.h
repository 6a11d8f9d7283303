// Entry points of the compiled extension, one per kernel, taking and returning at::Tensor.
// Each is exposed to Python as <op>_<fn>_<backend> (see tltorch_ext/ops/_dispatch.py) with the
// same signature as the reference function tltorch_ext.reference.<op>.<fn>.
#pragma once
#include <torch/extension.h>

#include <optional>
#include <tuple>

namespace tltorch_ext {

// ---- StochNorm (SPEC §1.1): csrc/cpu/stoch_norm.cpp, csrc/cuda/stoch_norm.cu ----------------
// x (N, C, *) is viewed as (N, C, S), S the product of the trailing sizes, stored either channel-
// major per sample (offset (n·C + c)·S + s: contiguous) or channels-last (offset (n·S + s)·C + c:
// channels_last / channels_last_3d). With S = 1 both are the same memory; it counts as
// channels-last, whose kernels are the ones that stay efficient then.
struct StochNormLayout {
  int64_t n, c, s;
  bool channels_last;
  at::MemoryFormat format;  // the format x (and grad_y) are made contiguous in, a no-op normally
};

inline StochNormLayout stoch_norm_layout(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 2, "stoch_norm: x must be (N, C, *), got shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "stoch_norm: x must be a floating-point tensor, got ", x.scalar_type());
  int64_t s = 1;
  for (int64_t d = 2; d < x.dim(); ++d) s *= x.size(d);
  at::MemoryFormat format = at::MemoryFormat::Contiguous;
  if (!x.is_contiguous()) {
    if (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
      format = at::MemoryFormat::ChannelsLast;
    } else if (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d)) {
      format = at::MemoryFormat::ChannelsLast3d;
    }
  }
  TORCH_CHECK(x.size(0) * s >= 1 && x.size(1) >= 1,
              "stoch_norm: x must have at least one value per channel, got shape ", x.sizes());
  return {x.size(0), x.size(1), s, format != at::MemoryFormat::Contiguous || s == 1, format};
}

// Each (C,) argument must have C elements; the mask must be bool.
inline void check_stoch_norm_channels(const StochNormLayout& layout,
                                      const std::optional<at::Tensor>& weight,
                                      const std::optional<at::Tensor>& bias,
                                      const at::Tensor& mean, const at::Tensor& var,
                                      const at::Tensor& mask) {
  for (const at::Tensor* t : {weight.has_value() ? &*weight : nullptr,
                              bias.has_value() ? &*bias : nullptr, &mean, &var, &mask}) {
    if (t == nullptr || !t->defined()) continue;
    TORCH_CHECK(t->dim() == 1 && t->size(0) == layout.c,
                "stoch_norm: per-channel tensors must have shape (", layout.c, "), got ", t->sizes());
    TORCH_CHECK(t->device() == mask.device(), "stoch_norm: all tensors must be on one device");
  }
  TORCH_CHECK(mask.scalar_type() == at::kBool, "stoch_norm: mask must be bool, got ",
              mask.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> stoch_norm_forward_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& running_mean,
    const at::Tensor& running_var, const at::Tensor& mask, double eps);
std::tuple<at::Tensor, at::Tensor, at::Tensor> stoch_norm_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const at::Tensor& mask, const at::Tensor& save_mean, const at::Tensor& save_invstd);
#ifdef WITH_CUDA
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> stoch_norm_forward_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& running_mean,
    const at::Tensor& running_var, const at::Tensor& mask, double eps);
std::tuple<at::Tensor, at::Tensor, at::Tensor> stoch_norm_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const at::Tensor& mask, const at::Tensor& save_mean, const at::Tensor& save_invstd);
#endif
// ---- end StochNorm ---------------------------------------------------------------------------

}  // namespace tltorch_ext
