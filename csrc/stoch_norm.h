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

inline void stoch_norm_check_mask(const at::Tensor& mask) {
  TORCH_CHECK(mask.scalar_type() == at::kBool, "stoch_norm: mask must be bool, got ",
              mask.scalar_type());
}

// grad_y (or any tensor read beside x) must match x; returned contiguous in x's format.
inline at::Tensor stoch_norm_like_x(const char* name, const at::Tensor& t, const at::Tensor& x,
                                    const StochNormLayout& layout) {
  TORCH_CHECK(t.sizes() == x.sizes() && t.scalar_type() == x.scalar_type() &&
                  t.device() == x.device(),
              "stoch_norm: ", name, " must match x in shape, dtype and device, got ", t.sizes(),
              " ", t.scalar_type(), " for x ", x.sizes(), " ", x.scalar_type());
  return t.contiguous(layout.format);
}

// x checked and made contiguous in its format, with its accumulation dtype (float32, or float64
// for double): what every entry point starts from.
struct StochNormInput {
  StochNormLayout layout;
  at::ScalarType acc_dtype;
  at::Tensor input;

  explicit StochNormInput(const at::Tensor& x)
      : layout(stoch_norm_layout(x)), acc_dtype(at::toOpMathType(x.scalar_type())),
        input(x.contiguous(layout.format)) {}

  // A per-channel argument in the accumulation dtype (undefined when absent).
  at::Tensor channel(const char* name, const std::optional<at::Tensor>& t) const {
    return stoch_norm_channel_arg(name, t, input, acc_dtype);
  }
  at::Tensor mask(const at::Tensor& t) const {
    stoch_norm_check_mask(t);
    return stoch_norm_channel_arg("mask", t, input, at::kBool);
  }
  at::Tensor like_x(const char* name, const at::Tensor& t) const {
    return stoch_norm_like_x(name, t, input, layout);
  }
  at::Tensor new_channel_stat() const {
    return at::empty({layout.c}, input.options().dtype(acc_dtype));
  }
};

// What the fused CPU and CUDA entry points share: checked inputs made ready for the kernels (x and
// grad_y contiguous in x's format, per-channel tensors in the accumulation dtype) and the outputs
// allocated (statistics in the accumulation dtype).
struct StochNormForwardArgs : StochNormInput {
  at::Tensor weight, bias, running_mean, running_var, mask;  // weight, bias: or undefined
  at::Tensor y, save_mean, save_invstd, batch_mean, batch_var;

  StochNormForwardArgs(const at::Tensor& x, const std::optional<at::Tensor>& weight_,
                       const std::optional<at::Tensor>& bias_, const at::Tensor& running_mean_,
                       const at::Tensor& running_var_, const at::Tensor& mask_)
      : StochNormInput(x), weight(channel("weight", weight_)), bias(channel("bias", bias_)),
        running_mean(channel("running_mean", running_mean_)),
        running_var(channel("running_var", running_var_)), mask(StochNormInput::mask(mask_)),
        y(at::empty_like(input)), save_mean(new_channel_stat()),
        save_invstd(new_channel_stat()), batch_mean(new_channel_stat()),
        batch_var(new_channel_stat()) {}

  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> outputs() const {
    return {y, save_mean, save_invstd, batch_mean, batch_var};
  }
};

struct StochNormBackwardArgs : StochNormInput {
  at::ScalarType param_dtype;
  at::Tensor grad_y, weight, mask, save_mean, save_invstd;  // weight: may be undefined
  at::Tensor grad_x, grad_weight, grad_bias;  // parameter gradients in acc_dtype until outputs()

  StochNormBackwardArgs(const at::Tensor& grad_y_, const at::Tensor& x,
                        const std::optional<at::Tensor>& weight_, const at::Tensor& mask_,
                        const at::Tensor& save_mean_, const at::Tensor& save_invstd_)
      : StochNormInput(x),
        param_dtype(weight_.has_value() && weight_->defined() ? weight_->scalar_type()
                                                              : acc_dtype),
        grad_y(like_x("grad_y", grad_y_)), weight(channel("weight", weight_)),
        mask(StochNormInput::mask(mask_)), save_mean(channel("save_mean", save_mean_)),
        save_invstd(channel("save_invstd", save_invstd_)), grad_x(at::empty_like(input)),
        grad_weight(new_channel_stat()), grad_bias(new_channel_stat()) {}

  std::tuple<at::Tensor, at::Tensor, at::Tensor> outputs() const {
    return {grad_x, grad_weight.to(param_dtype), grad_bias.to(param_dtype)};
  }
};

// The phase ops' arguments, checked and prepared as the fused ones' are.
struct StochNormElemtArgs : StochNormInput {
  at::Tensor weight, bias, save_mean, save_invstd;  // weight, bias: or undefined
  at::Tensor y;

  StochNormElemtArgs(const at::Tensor& x, const std::optional<at::Tensor>& weight_,
                     const std::optional<at::Tensor>& bias_, const at::Tensor& save_mean_,
                     const at::Tensor& save_invstd_)
      : StochNormInput(x), weight(channel("weight", weight_)), bias(channel("bias", bias_)),
        save_mean(channel("save_mean", save_mean_)),
        save_invstd(channel("save_invstd", save_invstd_)), y(at::empty_like(input)) {}
};

struct StochNormBackwardReduceArgs : StochNormInput {
  at::Tensor grad_y, save_mean, save_invstd;
  at::Tensor sum_dy, sum_dy_xhat;

  StochNormBackwardReduceArgs(const at::Tensor& grad_y_, const at::Tensor& x,
                              const at::Tensor& save_mean_, const at::Tensor& save_invstd_)
      : StochNormInput(x), grad_y(like_x("grad_y", grad_y_)),
        save_mean(channel("save_mean", save_mean_)),
        save_invstd(channel("save_invstd", save_invstd_)), sum_dy(new_channel_stat()),
        sum_dy_xhat(new_channel_stat()) {}

  std::tuple<at::Tensor, at::Tensor> outputs() const { return {sum_dy, sum_dy_xhat}; }
};

// The number of values backward_elemt's sums ran over: a base of its arguments, so that it is
// checked before x.
struct StochNormCount {
  int64_t count;

  explicit StochNormCount(int64_t count_) : count(count_) {
    TORCH_CHECK(count >= 1, "stoch_norm: count must be at least 1, got ", count);
  }
};

struct StochNormBackwardElemtArgs : StochNormCount, StochNormInput {
  at::Tensor grad_y, weight, mask, save_mean, save_invstd;  // weight: or undefined
  at::Tensor sum_dy, sum_dy_xhat;
  at::Tensor grad_x;

  StochNormBackwardElemtArgs(const at::Tensor& grad_y_, const at::Tensor& x,
                             const std::optional<at::Tensor>& weight_, const at::Tensor& mask_,
                             const at::Tensor& save_mean_, const at::Tensor& save_invstd_,
                             const at::Tensor& sum_dy_, const at::Tensor& sum_dy_xhat_,
                             int64_t count_)
      : StochNormCount(count_), StochNormInput(x), grad_y(like_x("grad_y", grad_y_)),
        weight(channel("weight", weight_)), mask(StochNormInput::mask(mask_)),
        save_mean(channel("save_mean", save_mean_)),
        save_invstd(channel("save_invstd", save_invstd_)), sum_dy(channel("sum_dy", sum_dy_)),
        sum_dy_xhat(channel("sum_dy_xhat", sum_dy_xhat_)), grad_x(at::empty_like(input)) {}
};

}  // namespace tltorch_ext
