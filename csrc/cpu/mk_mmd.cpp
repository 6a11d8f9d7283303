// Multi-kernel MMD on CPU (docs/api_mmd.md); same functions and results as
// tltorch_ext/reference/mk_mmd.py.
//
// Every layer's rows are first packed centred (zc = z − c) in the accumulation type, with their
// squared norms q: one copy of the input, which the Gram trick d_ij = q_i + q_j − 2 zc_i·zc_j
// needs in any case for 16-bit inputs, and whose centring keeps it accurate when the features
// share a large offset. Quadratic estimates then run over tiles of kRows × kCols pairs: the
// tile's dot products of every layer as one GEMM through ATen (MKL or whichever BLAS torch was
// built with), then all kernels, their product over layers and the weights, reduced to one double
// per tile; forward visits the pairs i < j (the row block's columns from its first row on),
// backward every column tile of its row block and applies A^l = (W + Wᵀ) ∘ ∂K/∂d^l to the column
// block's rows with a second GEMM, so neither direction stores anything of size n². The tiles run
// in at::parallel_for, where ATen's GEMM stays on the calling thread (no oversubscription). The
// linear estimate visits its 4B pairs directly. Accumulation is float32 (double for double
// inputs).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm_cpu_dispatch.h>
#include <ATen/ops/mm_cpu_dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "../mk_mmd.h"
#include "feature_rows.h"
#include "isa_clones.h"

namespace tltorch_ext {
namespace {

// A tile's per-layer buffers (kRows × kCols values, 64 KiB in float32) stay in L2 next to the
// GEMM operands; of 64 or 128 rows × 128 or 256 columns, 128 × 128 ran fastest here (the
// backward's second GEMM, which adds A·zc_J into the row block's kRows × d accumulator, gains
// most from the taller block).
constexpr int64_t kRows = 128;
constexpr int64_t kCols = 128;

template <typename acc_t>
struct Layer {
  const acc_t* rows;   // zc, (n, dim) contiguous
  const acc_t* norms;  // q, (n,)
  int64_t dim;
  const acc_t* gammas;
  int64_t count;
};

using mmd::Problem;

Problem check_inputs(at::TensorList features, at::TensorList centers, const at::Tensor& gammas,
                     at::IntArrayRef kernels, const std::string& estimate) {
  const Problem p = mmd::check_problem(
      features, centers, kernels, estimate,
      [](size_t l, const at::Tensor& z, const at::Tensor& center, const at::Tensor& first) {
        const int64_t n = first.size(0);
        TORCH_CHECK(z.device().is_cpu() && z.dim() == 2 && z.size(0) == n && z.is_contiguous() &&
                        z.scalar_type() == first.scalar_type(),
                    "mk_mmd: features must be contiguous (", n,
                    ", d) CPU tensors of one dtype, got ", z.sizes(), " ", z.scalar_type(),
                    " on ", z.device());
        const auto acc = at::toOpMathType(first.scalar_type());
        TORCH_CHECK(center.scalar_type() == acc && center.is_contiguous() &&
                        center.numel() == z.size(1) && center.device().is_cpu(),
                    "mk_mmd: centers[", l, "] must be a contiguous CPU ", acc, " tensor of ",
                    z.size(1), " values");
      });
  TORCH_CHECK(gammas.scalar_type() == at::kDouble && gammas.device().is_cpu() &&
                  gammas.dim() == 1 && gammas.numel() == p.kernel_total,
              "mk_mmd: gammas must be a CPU float64 vector of ", p.kernel_total, " values");
  return p;
}

// The layers' centred rows and norms, packed in `storage`, and their bandwidths.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
std::vector<Layer<acc_t>> pack_layers(at::TensorList features, at::TensorList centers,
                                      const at::Tensor& gammas, at::IntArrayRef kernels,
                                      at::Tensor& storage, std::vector<acc_t>& bandwidths) {
  const int64_t n = features[0].size(0);
  int64_t values = 0;
  for (const auto& z : features) values += n * (z.size(1) + 1);
  storage = at::empty({values}, features[0].options().dtype(c10::CppTypeToScalarType<acc_t>()));
  const double* g = gammas.data_ptr<double>();
  bandwidths.assign(g, g + gammas.numel());
  std::vector<Layer<acc_t>> layers;
  acc_t* next = storage.data_ptr<acc_t>();
  int64_t first_kernel = 0;
  for (size_t l = 0; l < features.size(); ++l) {
    const int64_t dim = features[l].size(1);
    const scalar_t* src = features[l].data_ptr<scalar_t>();
    const acc_t* center = centers[l].data_ptr<acc_t>();
    acc_t* rows = next;
    acc_t* norms = rows + n * dim;
    at::parallel_for(0, n, grain_for(dim), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        acc_t squares = 0;
        acc_t* out = rows + r * dim;
#pragma omp simd reduction(+ : squares)
        for (int64_t k = 0; k < dim; ++k) {
          out[k] = static_cast<acc_t>(src[r * dim + k]) - center[k];
          squares += out[k] * out[k];
        }
        norms[r] = squares;
      }
    });
    layers.push_back({rows, norms, dim, bandwidths.data() + first_kernel, kernels[l]});
    first_kernel += kernels[l];
    next = norms + n;
  }
  return layers;
}

// e^x for the kernels' x ≤ 0 without a libm call, so that row_kernels vectorizes: Cody-Waite
// reduction x = n ln 2 + f (|f| ≤ ln 2 / 2, ln 2 split so that n·ln2_hi is exact), e^f by its
// degree-7 Taylor polynomial (remainder < 6e-9), 2^n through the exponent bits: within 2 ulp of
// expf. Below −87 (e^x < 2^-125) it returns 2^-126 or so, 0 to the kernel sums' precision; NaN
// stays NaN.
TLTORCH_EXT_INLINE float kernel_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // nearest integer
  const float f = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.0f / 5040;
  p = p * f + 1.0f / 720;
  p = p * f + 1.0f / 120;
  p = p * f + 1.0f / 24;
  p = p * f + 1.0f / 6;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  return p * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
}
TLTORCH_EXT_INLINE double kernel_exp(double x) { return std::exp(x); }

// Σ_k e^{−γ_k d} and, when wanted, Σ_k γ_k e^{−γ_k d}.
template <typename acc_t>
inline acc_t kernel_sum(const Layer<acc_t>& layer, acc_t d, acc_t* slope) {
  acc_t sum = 0, weighted = 0;
  for (int64_t k = 0; k < layer.count; ++k) {
    const acc_t e = kernel_exp(-layer.gammas[k] * d);
    sum += e;
    weighted += layer.gammas[k] * e;
  }
  if (slope != nullptr) *slope = weighted;
  return sum;
}

// One tile row of `len` columns from its dot products d: d[c] becomes the distance
// q_i + q_j[c] − 2 d[c] (clamped at 0, NaN kept), s[c] = Σ_k e^{−γ_k d[c]} and, unless t is null,
// t[c] = Σ_k γ_k e^{−γ_k d[c]}.
template <typename acc_t>
TLTORCH_EXT_INLINE void row_kernels_impl(acc_t q_i, const acc_t* q_j, int64_t len,
                                         const acc_t* gammas, int64_t count, acc_t* d, acc_t* s,
                                         acc_t* t) {
#pragma omp simd
  for (int64_t c = 0; c < len; ++c) {
    const acc_t v = q_i + q_j[c] - 2 * d[c];
    d[c] = v < acc_t(0) ? acc_t(0) : v;
    s[c] = 0;
  }
  if (t != nullptr) std::fill(t, t + len, acc_t(0));
  for (int64_t k = 0; k < count; ++k) {
    const acc_t gamma = gammas[k];
    if (t == nullptr) {
#pragma omp simd
      for (int64_t c = 0; c < len; ++c) s[c] += kernel_exp(-gamma * d[c]);
    } else {
#pragma omp simd
      for (int64_t c = 0; c < len; ++c) {
        const acc_t e = kernel_exp(-gamma * d[c]);
        s[c] += e;
        t[c] += gamma * e;
      }
    }
  }
}

// The exponentials vectorize in the AVX2 and AVX-512 copies (in the baseline one, GCC's default
// -ftrapping-math keeps the clamp's compare from becoming a select, and the loop scalar).
TLTORCH_EXT_ISA_CLONES void row_kernels(float q_i, const float* q_j, int64_t len,
                                        const float* gammas, int64_t count, float* d, float* s,
                                        float* t) {
  row_kernels_impl(q_i, q_j, len, gammas, count, d, s, t);
}
TLTORCH_EXT_ISA_CLONES void row_kernels(double q_i, const double* q_j, int64_t len,
                                        const double* gammas, int64_t count, double* d, double* s,
                                        double* t) {
  row_kernels_impl(q_i, q_j, len, gammas, count, d, s, t);
}

// A row-major (rows × cols) acc_t matrix at `data`, leading dimension `ld`, as a tensor for
// ATen's GEMM (no copy; the caller keeps the memory alive).
template <typename acc_t>
at::Tensor matrix(const acc_t* data, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<acc_t*>(data), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
}

// The (cols × rows) transpose of the row-major rows at `data`, leading dimension `ld`.
template <typename acc_t>
at::Tensor transposed(const acc_t* data, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<acc_t*>(data), {cols, rows}, {1, ld},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
}

// Fills S^l (and T^l when `slopes`) for the tile rows i0..i0+bi, columns j0..j0+bj of every
// layer, layer l's at l * tile; `dots` is one tile of scratch. Entries are (r, c) at r * bj + c.
template <typename acc_t>
void tile_kernels(const std::vector<Layer<acc_t>>& layers, int64_t i0, int64_t bi, int64_t j0,
                  int64_t bj, int64_t tile, acc_t* dots, acc_t* sums, acc_t* slopes) {
  for (size_t l = 0; l < layers.size(); ++l) {
    const Layer<acc_t>& layer = layers[l];
    at::Tensor gram = matrix(dots, bi, bj, bj);
    at::cpu::mm_out(gram, matrix(layer.rows + i0 * layer.dim, bi, layer.dim, layer.dim),
                    transposed(layer.rows + j0 * layer.dim, bj, layer.dim, layer.dim));
    for (int64_t r = 0; r < bi; ++r) {
      row_kernels(layer.norms[i0 + r], layer.norms + j0, bj, layer.gammas, layer.count,
                  dots + r * bj, sums + l * tile + r * bj,
                  slopes == nullptr ? nullptr : slopes + l * tile + r * bj);
    }
  }
}

template <typename acc_t>
double quadratic_forward(const Problem& p, const std::vector<Layer<acc_t>>& layers,
                         const at::Tensor& like) {
  // Row block I pairs its rows i with the columns j > i: the column tiles from its first row on.
  std::vector<std::pair<int64_t, int64_t>> tasks;  // (i0, j0)
  for (int64_t i0 = 0; i0 < p.n; i0 += kRows) {
    for (int64_t j0 = i0; j0 < p.n; j0 += kCols) tasks.emplace_back(i0, j0);
  }
  const int64_t tile = std::min(kRows, p.n) * std::min(kCols, p.n);  // scratch per layer
  const int64_t dims = std::accumulate(layers.begin(), layers.end(), int64_t(0),
                                       [](int64_t a, const Layer<acc_t>& l) { return a + l.dim; });
  ThreadScratch<acc_t> scratch(tile * (1 + static_cast<int64_t>(layers.size())), like);
  std::vector<double> partial(tasks.size());
  at::parallel_for(0, static_cast<int64_t>(tasks.size()), grain_for(tile * dims),
                   [&](int64_t begin, int64_t end) {
    acc_t* dots = scratch.local();
    acc_t* sums = dots + tile;
    for (int64_t task = begin; task < end; ++task) {
      const auto [i0, j0] = tasks[task];
      const int64_t bi = std::min(kRows, p.n - i0), bj = std::min(kCols, p.n - j0);
      tile_kernels<acc_t>(layers, i0, bi, j0, bj, tile, dots, sums, nullptr);
      double total = 0;
      for (int64_t r = 0; r < bi; ++r) {
        acc_t* k = sums + r * bj;  // K of the row: the first layer's sums times the others'
        for (size_t l = 1; l < layers.size(); ++l) {
          const acc_t* other = sums + l * tile + r * bj;
#pragma omp simd
          for (int64_t c = 0; c < bj; ++c) k[c] *= other[c];
        }
        // Columns first.. hold the pairs j > i; before `split` they are source rows.
        const int64_t first = std::clamp<int64_t>(i0 + r + 1 - j0, 0, bj);
        const int64_t split = std::clamp<int64_t>(p.batch - j0, first, bj);
        acc_t source = 0, target = 0;
#pragma omp simd reduction(+ : source)
        for (int64_t c = first; c < split; ++c) source += k[c];
#pragma omp simd reduction(+ : target)
        for (int64_t c = split; c < bj; ++c) target += k[c];
        const bool from_source = i0 + r < p.batch;
        total += p.weights.same * (from_source ? source : target) +
                 p.weights.cross * (from_source ? target : source);
      }
      partial[task] = 2 * total;  // (i, j) and (j, i)
    }
  });
  return std::accumulate(partial.begin(), partial.end(), 0.0) + p.weights.diagonal;
}

// The linear estimate's pairs of row r: (partner, weight), four slots (B = 2 repeats partners,
// which the weights account for).
inline std::array<std::pair<int64_t, double>, 4> linear_partners(const Problem& p, int64_t r) {
  const int64_t b = p.batch, i = r % b, own = r - i, other = r < b ? b : 0;
  const int64_t next = (i + 1) % b, prev = (i + b - 1) % b;
  return {{{own + next, p.weights.same}, {own + prev, p.weights.same},
           {other + next, p.weights.cross}, {other + prev, p.weights.cross}}};
}

// K(a, b) = Π_l S^l(a, b) from the direct distances; with `slopes`, T^l and S^l per layer.
template <typename acc_t>
acc_t pair_kernel(const std::vector<Layer<acc_t>>& layers, int64_t a, int64_t b, acc_t* sums,
                  acc_t* slopes) {
  acc_t product = 1;
  for (size_t l = 0; l < layers.size(); ++l) {
    const Layer<acc_t>& layer = layers[l];
    const acc_t* x = layer.rows + a * layer.dim;
    const acc_t* y = layer.rows + b * layer.dim;
    acc_t d = 0;
#pragma omp simd reduction(+ : d)
    for (int64_t k = 0; k < layer.dim; ++k) d += (x[k] - y[k]) * (x[k] - y[k]);
    const acc_t s = kernel_sum(layer, d, slopes == nullptr ? nullptr : slopes + l);
    if (sums != nullptr) sums[l] = s;
    product *= s;
  }
  return product;
}

template <typename acc_t>
double linear_forward(const Problem& p, const std::vector<Layer<acc_t>>& layers) {
  std::vector<double> partial(p.batch);
  at::parallel_for(0, p.batch, grain_for(4 * layers[0].dim), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t s = i, s_next = (i + 1) % p.batch, t = s + p.batch, t_next = s_next + p.batch;
      const acc_t same = pair_kernel<acc_t>(layers, s, s_next, nullptr, nullptr) +
                         pair_kernel<acc_t>(layers, t, t_next, nullptr, nullptr);
      const acc_t cross = pair_kernel<acc_t>(layers, s, t_next, nullptr, nullptr) +
                          pair_kernel<acc_t>(layers, s_next, t, nullptr, nullptr);
      partial[i] = p.weights.same * same + p.weights.cross * cross;
    }
  });
  return std::accumulate(partial.begin(), partial.end(), 0.0);
}

// grad_i = 2g (r_i zc_i − acc_i) for the rows i0..i0+count of layer l.
template <typename scalar_t, typename acc_t>
void write_gradient(const Layer<acc_t>& layer, int64_t i0, int64_t count, const acc_t* row_sums,
                    const acc_t* acc, acc_t scale, scalar_t* out) {
  for (int64_t r = 0; r < count; ++r) {
    const acc_t* zc = layer.rows + (i0 + r) * layer.dim;
    const acc_t* a = acc + r * layer.dim;
    scalar_t* dst = out + (i0 + r) * layer.dim;
    for (int64_t k = 0; k < layer.dim; ++k) {
      dst[k] = static_cast<scalar_t>(scale * (row_sums[r] * zc[k] - a[k]));
    }
  }
}

template <typename scalar_t, typename acc_t>
void quadratic_backward(const Problem& p, const std::vector<Layer<acc_t>>& layers, acc_t scale,
                        std::vector<at::Tensor>& grads, const at::Tensor& like) {
  // Row blocks of kRows, smaller where n is small so that every thread gets one (16 at least).
  const int64_t rows = std::clamp<int64_t>(ceil_div(p.n, at::get_num_threads()), 16, kRows);
  const int64_t blocks = ceil_div(p.n, rows), tile = rows * std::min(kCols, p.n);
  const int64_t count = static_cast<int64_t>(layers.size());
  int64_t dims = 0;
  for (const auto& layer : layers) dims += layer.dim;
  // dots, S and T of every layer, A, the row sums and the accumulated A·zc of every layer.
  ThreadScratch<acc_t> scratch(tile * (2 + 2 * count) + rows * (count + dims), like);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    acc_t* dots = scratch.local();
    acc_t* sums = dots + tile;
    acc_t* slopes = sums + count * tile;
    acc_t* a = slopes + count * tile;
    acc_t* row_sums = a + tile;
    acc_t* acc = row_sums + count * rows;
    for (int64_t block = begin; block < end; ++block) {
      const int64_t i0 = block * rows, bi = std::min(rows, p.n - i0);
      std::fill(row_sums, row_sums + count * rows + rows * dims, acc_t(0));
      for (int64_t j0 = 0; j0 < p.n; j0 += kCols) {
        const int64_t bj = std::min(kCols, p.n - j0);
        tile_kernels<acc_t>(layers, i0, bi, j0, bj, tile, dots, sums, slopes);
        const int64_t split = std::clamp<int64_t>(p.batch - j0, 0, bj);  // source columns
        acc_t* layer_acc = acc;
        for (int64_t l = 0; l < count; ++l) {
          for (int64_t r = 0; r < bi; ++r) {
            // A = −(W + Wᵀ) T^l Π_{m≠l} S^m on the row, 0 at the diagonal pair.
            acc_t* a_row = a + r * bj;
            const acc_t* slope = slopes + l * tile + r * bj;
            const bool from_source = i0 + r < p.batch;
            const acc_t w_source = static_cast<acc_t>(
                -2 * (from_source ? p.weights.same : p.weights.cross));
            const acc_t w_target = static_cast<acc_t>(
                -2 * (from_source ? p.weights.cross : p.weights.same));
#pragma omp simd
            for (int64_t c = 0; c < bj; ++c) {
              a_row[c] = (c < split ? w_source : w_target) * slope[c];
            }
            for (int64_t m = 0; m < count; ++m) {
              if (m == l) continue;
              const acc_t* other = sums + m * tile + r * bj;
#pragma omp simd
              for (int64_t c = 0; c < bj; ++c) a_row[c] *= other[c];
            }
            if (i0 + r >= j0 && i0 + r < j0 + bj) a_row[i0 + r - j0] = 0;
            acc_t total = 0;
#pragma omp simd reduction(+ : total)
            for (int64_t c = 0; c < bj; ++c) total += a_row[c];
            row_sums[l * rows + r] += total;
          }
          const Layer<acc_t>& layer = layers[l];
          at::Tensor product = matrix(layer_acc, bi, layer.dim, layer.dim);
          at::cpu::addmm_(product, matrix(a, bi, bj, bj),
                          matrix(layer.rows + j0 * layer.dim, bj, layer.dim, layer.dim));
          layer_acc += rows * layer.dim;
        }
      }
      const acc_t* layer_acc = acc;
      for (int64_t l = 0; l < count; ++l) {
        write_gradient(layers[l], i0, bi, row_sums + l * rows, layer_acc, scale,
                       grads[l].data_ptr<scalar_t>());
        layer_acc += rows * layers[l].dim;
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
void linear_backward(const Problem& p, const std::vector<Layer<acc_t>>& layers, acc_t scale,
                     std::vector<at::Tensor>& grads, const at::Tensor& like) {
  const int64_t count = static_cast<int64_t>(layers.size());
  int64_t dims = 0;
  for (const auto& layer : layers) dims += layer.dim;
  ThreadScratch<acc_t> scratch(3 * count + dims, like);
  at::parallel_for(0, p.n, grain_for(8 * dims), [&](int64_t begin, int64_t end) {
    acc_t* sums = scratch.local();
    acc_t* slopes = sums + count;
    acc_t* row_sums = slopes + count;
    acc_t* acc = row_sums + count;
    for (int64_t r = begin; r < end; ++r) {
      std::fill(row_sums, row_sums + count + dims, acc_t(0));
      for (const auto& [partner, weight] : linear_partners(p, r)) {
        pair_kernel<acc_t>(layers, r, partner, sums, slopes);
        acc_t* layer_acc = acc;
        for (int64_t l = 0; l < count; ++l) {
          acc_t value = static_cast<acc_t>(-weight) * slopes[l];
          for (int64_t m = 0; m < count; ++m) {
            if (m != l) value *= sums[m];
          }
          row_sums[l] += value;
          const acc_t* zc = layers[l].rows + partner * layers[l].dim;
          for (int64_t k = 0; k < layers[l].dim; ++k) layer_acc[k] += value * zc[k];
          layer_acc += layers[l].dim;
        }
      }
      const acc_t* layer_acc = acc;
      for (int64_t l = 0; l < count; ++l) {
        write_gradient(layers[l], r, 1, row_sums + l, layer_acc, scale,
                       grads[l].data_ptr<scalar_t>());
        layer_acc += layers[l].dim;
      }
    }
  });
}

}  // namespace

at::Tensor mk_mmd_forward_cpu(at::TensorList features, at::TensorList centers,
                              const at::Tensor& gammas, at::IntArrayRef kernels,
                              c10::string_view estimate) {
  const Problem p = check_inputs(features, centers, gammas, kernels, std::string(estimate));
  double loss = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features[0].scalar_type(),
                                  "mk_mmd_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor storage;
    std::vector<acc_t> bandwidths;
    const auto layers =
        pack_layers<scalar_t>(features, centers, gammas, kernels, storage, bandwidths);
    loss = p.estimate == mmd::Estimate::kLinear ? linear_forward<acc_t>(p, layers)
                                                : quadratic_forward<acc_t>(p, layers, storage);
  });
  return at::scalar_tensor(loss, features[0].options());
}

std::vector<at::Tensor> mk_mmd_backward_cpu(const at::Tensor& grad, at::TensorList features,
                                            at::TensorList centers, const at::Tensor& gammas,
                                            at::IntArrayRef kernels, c10::string_view estimate) {
  const Problem p = check_inputs(features, centers, gammas, kernels, std::string(estimate));
  std::vector<at::Tensor> grads;
  for (const auto& z : features) grads.push_back(at::empty_like(z));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features[0].scalar_type(),
                                  "mk_mmd_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor storage;
    std::vector<acc_t> bandwidths;
    const auto layers =
        pack_layers<scalar_t>(features, centers, gammas, kernels, storage, bandwidths);
    const acc_t scale = static_cast<acc_t>(2 * grad.item<double>());
    if (p.estimate == mmd::Estimate::kLinear) {
      linear_backward<scalar_t, acc_t>(p, layers, scale, grads, storage);
    } else {
      quadratic_backward<scalar_t, acc_t>(p, layers, scale, grads, storage);
    }
  });
  return grads;
}

// The schemas are defined here, with the CPU kernels; csrc/cuda/mk_mmd_binding.cpp adds CUDA ones.
TORCH_LIBRARY_FRAGMENT(tltorch_ext_C, m) {
  m.def("mk_mmd_forward(Tensor[] features, Tensor[] centers, Tensor gammas, int[] kernels, "
        "str estimate) -> Tensor");
  m.def("mk_mmd_backward(Tensor grad, Tensor[] features, Tensor[] centers, Tensor gammas, "
        "int[] kernels, str estimate) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(tltorch_ext_C, CPU, m) {
  m.impl("mk_mmd_forward", &mk_mmd_forward_cpu);
  m.impl("mk_mmd_backward", &mk_mmd_backward_cpu);
}

}  // namespace tltorch_ext
