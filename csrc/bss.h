// BSS: the argument checks and the eigh fallback that the CPU kernels (csrc/cpu/bss.cpp) and
// the CUDA binding (csrc/cuda/bss_binding.cpp) share.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <optional>
#include <tuple>

namespace tltorch_ext {
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

}  // namespace tltorch_ext
