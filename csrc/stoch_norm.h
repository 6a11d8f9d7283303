// StochNorm: the argument checks and prepared tensors that the CPU kernels
// (csrc/cpu/stoch_norm.cpp) and the CUDA binding (csrc/cuda/stoch_norm_binding.cpp) share.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <optional>
#include <tuple>

namespace tltorch_ext {
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

// A per-channel argument: shape (C,), on x's device, converted to `dtype` and contiguous;
// undefined when absent.
inline at::Tensor stoch_norm_channel_arg(const char* name, const std::optional<at::Tensor>& t,
                                         const at::Tensor& x, at::ScalarType dtype) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  TORCH_CHECK(t->dim() == 1 && t->size(0) == x.size(1), "stoch_norm: ", name,
              " must have shape (", x.size(1), ") to match x, got ", t->sizes());
  TORCH_CHECK(t->device() == x.device(), "stoch_norm: ", name, " is on ", t->device(),
              " but x is on ", x.device());
  return t->to(dtype).contiguous();
}

// What the CPU and CUDA entry points share: checked inputs made ready for the kernels (x and
// grad_y contiguous in x's format, per-channel tensors in the accumulation dtype: float32, or
// float64 for double) and the outputs allocated (statistics in the accumulation dtype).
struct StochNormForwardArgs {
  StochNormLayout layout;
  at::ScalarType acc_dtype;
  at::Tensor input, weight, bias, running_mean, running_var, mask;  // weight, bias: or undefined
  at::Tensor y, save_mean, save_invstd, batch_mean, batch_var;

  StochNormForwardArgs(const at::Tensor& x, const std::optional<at::Tensor>& weight_,
                       const std::optional<at::Tensor>& bias_, const at::Tensor& running_mean_,
                       const at::Tensor& running_var_, const at::Tensor& mask_)
      : layout(stoch_norm_layout(x)), acc_dtype(at::toOpMathType(x.scalar_type())),
        input(x.contiguous(layout.format)),
        weight(stoch_norm_channel_arg("weight", weight_, x, acc_dtype)),
        bias(stoch_norm_channel_arg("bias", bias_, x, acc_dtype)),
        running_mean(stoch_norm_channel_arg("running_mean", running_mean_, x, acc_dtype)),
        running_var(stoch_norm_channel_arg("running_var", running_var_, x, acc_dtype)),
        mask(stoch_norm_channel_arg("mask", mask_, x, at::kBool)), y(at::empty_like(input)) {
    TORCH_CHECK(mask_.scalar_type() == at::kBool, "stoch_norm: mask must be bool, got ",
                mask_.scalar_type());
    const auto options = input.options().dtype(acc_dtype);
    for (at::Tensor* t : {&save_mean, &save_invstd, &batch_mean, &batch_var})
      *t = at::empty({layout.c}, options);
  }

  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> outputs() const {
    return {y, save_mean, save_invstd, batch_mean, batch_var};
  }
};

struct StochNormBackwardArgs {
  StochNormLayout layout;
  at::ScalarType acc_dtype, param_dtype;
  at::Tensor grad_y, input, weight, mask, save_mean, save_invstd;  // weight: may be undefined
  at::Tensor grad_x, grad_weight, grad_bias;  // parameter gradients in acc_dtype until outputs()

  StochNormBackwardArgs(const at::Tensor& grad_y_, const at::Tensor& x,
                        const std::optional<at::Tensor>& weight_, const at::Tensor& mask_,
                        const at::Tensor& save_mean_, const at::Tensor& save_invstd_)
      : layout(stoch_norm_layout(x)), acc_dtype(at::toOpMathType(x.scalar_type())),
        param_dtype(weight_.has_value() && weight_->defined() ? weight_->scalar_type()
                                                              : acc_dtype),
        grad_y(grad_y_.contiguous(layout.format)), input(x.contiguous(layout.format)),
        weight(stoch_norm_channel_arg("weight", weight_, x, acc_dtype)),
        mask(stoch_norm_channel_arg("mask", mask_, x, at::kBool)),
        save_mean(stoch_norm_channel_arg("save_mean", save_mean_, x, acc_dtype)),
        save_invstd(stoch_norm_channel_arg("save_invstd", save_invstd_, x, acc_dtype)),
        grad_x(at::empty_like(input)) {
    TORCH_CHECK(grad_y_.sizes() == x.sizes() && grad_y_.scalar_type() == x.scalar_type() &&
                    grad_y_.device() == x.device(),
                "stoch_norm: grad_y must match x in shape, dtype and device, got ",
                grad_y_.sizes(), " ", grad_y_.scalar_type(), " for x ", x.sizes(), " ",
                x.scalar_type());
    TORCH_CHECK(mask_.scalar_type() == at::kBool, "stoch_norm: mask must be bool, got ",
                mask_.scalar_type());
    const auto options = input.options().dtype(acc_dtype);
    grad_weight = at::empty({layout.c}, options);
    grad_bias = at::empty({layout.c}, options);
  }

  std::tuple<at::Tensor, at::Tensor, at::Tensor> outputs() const {
    return {grad_x, grad_weight.to(param_dtype), grad_bias.to(param_dtype)};
  }
};

}  // namespace tltorch_ext
