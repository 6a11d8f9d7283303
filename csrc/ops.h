// Entry points of the compiled extension, one per kernel, taking and returning at::Tensor.
// Each is exposed to Python as <op>_<fn>_<backend> (see tltorch_ext/ops/_dispatch.py) with the
// same signature as the reference function tltorch_ext.reference.<op>.<fn>.
#pragma once
#include <ATen/OpMathType.h>
#include <torch/extension.h>

#include <algorithm>
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
// ---- BSS (SPEC §1.4): csrc/cpu/bss.cpp, csrc/cuda/bss.cu -------------------------------------
// feature (n, b, d); the Gram side is A = F (b <= d, m = b) or A = Fᵀ (b > d, m = d).
// forward → (penalty (n,) in feature's dtype, vectors (n, m, k) in float32, float64 for double);
// backward → grad_feature = 2 g U_k U_kᵀ F or 2 g F V_k V_kᵀ in feature's dtype.
inline void bss_check_forward(const at::Tensor& feature, int64_t k) {
  TORCH_CHECK(feature.dim() == 3, "bss: feature must be (n, b, d), got shape ", feature.sizes());
  TORCH_CHECK(at::isFloatingType(feature.scalar_type()),
              "bss: feature must be a floating-point tensor, got ", feature.scalar_type());
  const int64_t m = std::min(feature.size(1), feature.size(2));
  TORCH_CHECK(k >= 1 && k <= m, "bss: k must satisfy 1 <= k <= min(b, d) = ", m, ", got ", k);
}

inline void bss_check_backward(const at::Tensor& grad_penalty, const at::Tensor& feature,
                               const at::Tensor& vectors) {
  TORCH_CHECK(feature.dim() == 3 && at::isFloatingType(feature.scalar_type()),
              "bss: feature must be a floating-point (n, b, d) tensor, got ", feature.sizes(), " ",
              feature.scalar_type());
  const int64_t n = feature.size(0), m = std::min(feature.size(1), feature.size(2));
  TORCH_CHECK(vectors.dim() == 3 && vectors.size(0) == n && vectors.size(1) == m &&
                  vectors.size(2) >= 1,
              "bss: vectors must be (", n, ", ", m, ", k), got ", vectors.sizes());
  TORCH_CHECK(vectors.scalar_type() == at::toOpMathType(feature.scalar_type()),
              "bss: vectors must be ", at::toOpMathType(feature.scalar_type()), " for ",
              feature.scalar_type(), " feature, got ", vectors.scalar_type());
  TORCH_CHECK(grad_penalty.dim() == 1 && grad_penalty.size(0) == n,
              "bss: grad_penalty must be (", n, ",), got ", grad_penalty.sizes());
  TORCH_CHECK(vectors.device() == feature.device() && grad_penalty.device() == feature.device(),
              "bss: feature, vectors and grad_penalty must be on one device");
}

// The k smallest eigenpairs of a batch of float64 Grams (n, m, m) by at::linalg_eigh, on their
// device: (Σ of the k smallest eigenvalues clamped at 0, in out_dtype; their eigenvectors
// (n, m, k) in vectors_dtype), NaN for a Gram with a non-finite entry. The CPU eigensolver, and
// the CUDA one for Grams too large for the Jacobi kernel.
std::tuple<at::Tensor, at::Tensor> bss_smallest_by_eigh(const at::Tensor& gram, int64_t k,
                                                        at::ScalarType out_dtype,
                                                        at::ScalarType vectors_dtype);
std::tuple<at::Tensor, at::Tensor> bss_forward_cpu(const at::Tensor& feature, int64_t k);
at::Tensor bss_backward_cpu(const at::Tensor& grad_penalty, const at::Tensor& feature,
                            const at::Tensor& vectors);
#ifdef WITH_CUDA
std::tuple<at::Tensor, at::Tensor> bss_forward_cuda(const at::Tensor& feature, int64_t k);
at::Tensor bss_backward_cuda(const at::Tensor& grad_penalty, const at::Tensor& feature,
                             const at::Tensor& vectors);
#endif
// ---- end BSS ---------------------------------------------------------------------------------
// FSP (csrc/cpu/fsp.cpp): maps are (B, C, HW), any strides.
at::Tensor fsp_matrix_cpu(const at::Tensor& bot, const at::Tensor& top);
std::tuple<at::Tensor, at::Tensor> fsp_forward_cpu(const at::Tensor& bot_s, const at::Tensor& top_s,
                                                   const at::Tensor& bot_t, const at::Tensor& top_t,
                                                   bool keep_diff);
at::Tensor fsp_backward_cpu(const at::Tensor& m, const at::Tensor& x, bool transpose_m,
                            double alpha, const std::optional<at::Tensor>& grad);

// NST (csrc/cpu/nst.cpp).
std::tuple<at::Tensor, at::Tensor, at::Tensor> nst_forward_cpu(const at::Tensor& f_s,
                                                               const at::Tensor& f_t, bool spatial);
std::tuple<at::Tensor, at::Tensor> nst_backward_cpu(const at::Tensor& grad, const at::Tensor& f_s,
                                                    const at::Tensor& f_t, const at::Tensor& norm_s,
                                                    const at::Tensor& norm_t, bool spatial,
                                                    bool need_s, bool need_t);

#ifdef WITH_CUDA
// FSP and NST (csrc/cuda/bindings_cuda.cpp over csrc/cuda/fsp.cu, nst.cu).
at::Tensor fsp_matrix_cuda(const at::Tensor& bot, const at::Tensor& top);
std::tuple<at::Tensor, at::Tensor> fsp_forward_cuda(const at::Tensor& bot_s,
                                                    const at::Tensor& top_s,
                                                    const at::Tensor& bot_t,
                                                    const at::Tensor& top_t, bool keep_diff);
at::Tensor fsp_backward_cuda(const at::Tensor& m, const at::Tensor& x, bool transpose_m,
                             double alpha, const std::optional<at::Tensor>& grad);
std::tuple<at::Tensor, at::Tensor, at::Tensor> nst_forward_cuda(const at::Tensor& f_s,
                                                                const at::Tensor& f_t,
                                                                bool spatial);
std::tuple<at::Tensor, at::Tensor> nst_backward_cuda(const at::Tensor& grad, const at::Tensor& f_s,
                                                     const at::Tensor& f_t,
                                                     const at::Tensor& norm_s,
                                                     const at::Tensor& norm_t, bool spatial,
                                                     bool need_s, bool need_t);
#endif

}  // namespace tltorch_ext
