// Batch Spectral Shrinkage on CPU (docs/api_bss.md); same functions and results as
// tltorch_ext/reference/bss.py, on (n, b, d) contiguous features.
//
// Forward: the smaller Gram G = A Aᵀ (A = F when b ≤ d, Fᵀ when b > d) in float64 by BLAS on a
// float64 copy of F (products of float32 values are exact in float64; forming G squares the
// condition number, so float32 accumulation would lose σ_min² from σ_max/σ_min ≈ 30 on), then its
// k smallest eigenpairs by LAPACK (at::linalg_eigh, syevd). Measured here, syevd beats a compact
// Jacobi at every size from m = 8 on (see docs/api_bss.md), so this backend has no Jacobi.
// Backward: 2 g U_k U_kᵀ F (b ≤ d) or 2 g F V_k V_kᵀ (b > d) in one pass over F per output block,
// parallel over column blocks (rows side) or rows (columns side), float32 accumulation (float64
// for double).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/linalg_eigh.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "bss.h"

namespace tltorch_ext {
namespace {

// Values of F per parallel task at least.
constexpr int64_t kGrainValues = 1 << 15;
// Floats of the per-task block W = U_kᵀ A[:, block] (kept in L1/L2 while the block is written).
constexpr int64_t kBlockValues = 1 << 13;

// Rows side, one (matrix, column block): W = U_kᵀ A[:, c0:c0+width], then
// out[:, block] = scale · U_k W. u is (m, k) row-major, a and out are (m, length) row-major.
template <typename scalar_t, typename acc_t>
void project_rows_block(const scalar_t* a, const acc_t* u, acc_t scale, scalar_t* out, int64_t m,
                        int64_t length, int64_t k, int64_t c0, int64_t width, acc_t* w,
                        acc_t* row_acc) {
  std::fill(w, w + k * width, acc_t(0));
  for (int64_t i = 0; i < m; ++i) {
    const scalar_t* a_row = a + i * length + c0;
    for (int64_t j = 0; j < k; ++j) {
      const acc_t u_ij = u[i * k + j];
      acc_t* w_j = w + j * width;
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) w_j[c] += u_ij * static_cast<acc_t>(a_row[c]);
    }
  }
  for (int64_t i = 0; i < m; ++i) {
    std::fill(row_acc, row_acc + width, acc_t(0));
    for (int64_t j = 0; j < k; ++j) {
      const acc_t u_ij = u[i * k + j];
      const acc_t* w_j = w + j * width;
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) row_acc[c] += u_ij * w_j[c];
    }
    scalar_t* out_row = out + i * length + c0;
#pragma omp simd
    for (int64_t c = 0; c < width; ++c) out_row[c] = static_cast<scalar_t>(scale * row_acc[c]);
  }
}

// Columns side, one row f of F (d values): y = f V_k, then out_row = scale · y V_kᵀ.
// v is (d, k) row-major.
template <typename scalar_t, typename acc_t>
void project_columns_row(const scalar_t* f, const acc_t* v, acc_t scale, scalar_t* out, int64_t d,
                         int64_t k, acc_t* y) {
  std::fill(y, y + k, acc_t(0));
  for (int64_t j = 0; j < d; ++j) {
    const acc_t x = static_cast<acc_t>(f[j]);
    const acc_t* v_j = v + j * k;
#pragma omp simd
    for (int64_t c = 0; c < k; ++c) y[c] += x * v_j[c];
  }
  for (int64_t j = 0; j < d; ++j) {
    const acc_t* v_j = v + j * k;
    acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t c = 0; c < k; ++c) dot += y[c] * v_j[c];
    out[j] = static_cast<scalar_t>(scale * dot);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> bss_smallest_by_eigh(const at::Tensor& gram, int64_t k,
                                                        at::ScalarType out_dtype,
                                                        at::ScalarType vectors_dtype) {
  TORCH_CHECK(gram.dim() == 3 && gram.size(1) == gram.size(2) && gram.size(1) >= k && k >= 1,
              "bss: gram must be (n, m, m) with m >= k >= 1, got ", gram.sizes(), " and k=", k);
  const at::Tensor finite = at::isfinite(gram).flatten(1).all(1);
  const at::Tensor finite3 = finite.view({-1, 1, 1});
  const at::Tensor zero = at::zeros({}, gram.options());
  const at::Tensor nan = at::full({}, std::numeric_limits<double>::quiet_NaN(), gram.options());
  auto [values, vectors] = at::linalg_eigh(at::where(finite3, gram, zero));
  // eigh sorts ascending: the first k are the smallest.
  const at::Tensor penalty = values.narrow(-1, 0, k).clamp_min(0).sum(-1);
  return {at::where(finite, penalty, nan).to(out_dtype),
          at::where(finite3, vectors.narrow(-1, 0, k), nan).to(vectors_dtype).contiguous()};
}

std::tuple<at::Tensor, at::Tensor> bss_forward_cpu(const at::Tensor& feature, int64_t k) {
  bss_check_forward(feature, k);
  const at::Tensor f64 = feature.contiguous().to(at::kDouble);
  const at::Tensor gram = feature.size(1) <= feature.size(2) ? at::matmul(f64, f64.mT())
                                                             : at::matmul(f64.mT(), f64);
  return bss_smallest_by_eigh(gram, k, feature.scalar_type(),
                              at::toOpMathType(feature.scalar_type()));
}

at::Tensor bss_backward_cpu(const at::Tensor& grad_penalty, const at::Tensor& feature_,
                            const at::Tensor& vectors_) {
  bss_check_backward(grad_penalty, feature_, vectors_);
  const at::Tensor feature = feature_.contiguous();
  const at::Tensor vectors = vectors_.contiguous();
  const at::Tensor scale = (grad_penalty * 2).to(vectors.scalar_type()).contiguous();
  at::Tensor grad = at::empty_like(feature);
  const int64_t batch = feature.size(0), b = feature.size(1), d = feature.size(2);
  const int64_t k = vectors.size(2);
  if (grad.numel() == 0) return grad;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, feature.scalar_type(), "bss_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* f = feature.const_data_ptr<scalar_t>();
        const acc_t* u = vectors.const_data_ptr<acc_t>();
        const acc_t* s = scale.const_data_ptr<acc_t>();
        scalar_t* out = grad.mutable_data_ptr<scalar_t>();
        if (b <= d) {
          const int64_t width = std::clamp<int64_t>(kBlockValues / k, 16, 512);
          const int64_t blocks = (d + width - 1) / width;
          const int64_t grain = std::max<int64_t>(1, kGrainValues / (b * width));
          at::parallel_for(0, batch * blocks, grain, [&](int64_t begin, int64_t end) {
            std::vector<acc_t> w(k * width), row_acc(width);
            for (int64_t task = begin; task < end; ++task) {
              const int64_t n = task / blocks, c0 = (task % blocks) * width;
              project_rows_block(f + n * b * d, u + n * b * k, s[n], out + n * b * d, b, d, k, c0,
                                 std::min(width, d - c0), w.data(), row_acc.data());
            }
          });
        } else {
          const int64_t grain = std::max<int64_t>(1, kGrainValues / d);
          at::parallel_for(0, batch * b, grain, [&](int64_t begin, int64_t end) {
            std::vector<acc_t> y(k);
            for (int64_t row = begin; row < end; ++row) {
              const int64_t n = row / b;
              project_columns_row(f + row * d, u + n * d * k, s[n], out + row * d, d, k, y.data());
            }
          });
        }
      });
  return grad;
}

// The schemas are defined here, with the CPU kernels; csrc/cuda/bss_binding.cpp adds CUDA ones.
TORCH_LIBRARY_FRAGMENT(tltorch_ext_C, m) {
  m.def("bss_forward(Tensor feature, int k) -> (Tensor, Tensor)");
  m.def("bss_backward(Tensor grad_penalty, Tensor feature, Tensor vectors) -> Tensor");
}

TORCH_LIBRARY_IMPL(tltorch_ext_C, CPU, m) {
  m.impl("bss_forward", &bss_forward_cpu);
  m.impl("bss_backward", &bss_backward_cpu);
}

}  // namespace tltorch_ext
