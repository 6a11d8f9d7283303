// NST on CPU (SPEC §1.3); same functions and results as tltorch_ext/reference/nst.py.
//
// Parallel over samples. A sample's rows are normalized (s_i = f_i / max(‖f_i‖, ε)) while being
// packed into per-thread scratch, transposed to (HW, C) for the spatial side so that both Gram
// sides reduce over contiguous rows. Forward reduces the Grams block by block in registers
// (gram_tiles.h): spatial, Σ (P_s/C_s − P_t/C_t)² over the upper triangle of HW × HW blocks;
// channel, ‖T Tᵀ‖²/C_t² + ‖S Sᵀ‖²/C_s² − 2‖S Tᵀ‖²/(C_s C_t), the self terms on the upper triangle.
// Backward recomputes the normalized rows and one sample's Grams (P_s and E, or S Sᵀ and S Tᵀ) in
// scratch, applies them to S and T (apply_rows), and takes the result through the normalization
// row by row. Accumulation is float32 (double for double inputs).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "feature_rows.h"
#include "gram_tiles.h"
#include "ops.h"

namespace tltorch_ext {
namespace {

constexpr double kEps = 1e-12;

void check_maps(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 3, name, " must be (B, C, HW), got shape ", t.sizes());
}

at::ScalarType acc_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Normalized rows of one sample packed into scratch (rows × len, or len × rows when transposed):
// inv[i] = 1 / max(norm[i], ε) is written first, then the rows. Returns the packed rows.
template <typename acc_t, typename scalar_t>
acc_t* pack_normalized(const SampleRows<scalar_t>& rows, int64_t count, const acc_t* norms,
                       bool transpose, acc_t*& scratch, acc_t*& inv) {
  inv = scratch;
  for (int64_t i = 0; i < count; ++i) inv[i] = acc_t(1) / std::max(norms[i], acc_t(kEps));
  acc_t* packed = scratch + count;
  pack_rows<acc_t>(rows, count, inv, transpose, packed);
  scratch = packed + count * rows.len;
  return packed;
}

// grad rows = (ds_i − s_i ⟨s_i, ds_i⟩) / max(‖f_i‖, ε), the radial term only where ‖f_i‖ > ε.
template <typename acc_t, typename scalar_t>
void normalize_backward(const acc_t* s, const acc_t* ds, const acc_t* norms, const acc_t* inv,
                        int64_t count, int64_t len, scalar_t* out) {
  for (int64_t i = 0; i < count; ++i) {
    const acc_t* s_row = s + i * len;
    const acc_t* ds_row = ds + i * len;
    acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t k = 0; k < len; ++k) dot += s_row[k] * ds_row[k];
    const acc_t radial = norms[i] > acc_t(kEps) ? dot : acc_t(0);
    scalar_t* out_row = out + i * len;
    for (int64_t k = 0; k < len; ++k) {
      out_row[k] = static_cast<scalar_t>((ds_row[k] - s_row[k] * radial) * inv[i]);
    }
  }
}

template <typename scalar_t>
double forward_sample(const at::Tensor& f_s, const at::Tensor& f_t, int64_t b, bool spatial,
                      at::opmath_type<scalar_t>* norm_s, at::opmath_type<scalar_t>* norm_t,
                      at::opmath_type<scalar_t>* scratch) {
  using acc_t = at::opmath_type<scalar_t>;
  const SampleRows<scalar_t> f_s_rows(f_s, b), f_t_rows(f_t, b);
  const int64_t c_s = f_s.size(1), c_t = f_t.size(1), len = f_s.size(2);
  for (int64_t i = 0; i < c_s; ++i) norm_s[i] = row_norm<acc_t>(f_s_rows, i);
  for (int64_t i = 0; i < c_t; ++i) norm_t[i] = row_norm<acc_t>(f_t_rows, i);
  acc_t *inv_s, *inv_t;
  const acc_t* s = pack_normalized(f_s_rows, c_s, norm_s, spatial, scratch, inv_s);
  const acc_t* t = pack_normalized(f_t_rows, c_t, norm_t, spatial, scratch, inv_t);
  if (spatial) {  // rows are positions: Σ over the HW × HW blocks of (SᵀS/C_s − TᵀT/C_t)²
    const tiles::RowProduct<acc_t> e[2] = {{s, c_s, s, c_s, c_s, acc_t(1) / c_s},
                                           {t, c_t, t, c_t, c_t, acc_t(-1) / c_t}};
    return tiles::gram_tiles(e, 2, len, len, true, nullptr, 0);
  }
  const tiles::RowProduct<acc_t> tt{t, len, t, len, len, acc_t(1) / c_t};
  const tiles::RowProduct<acc_t> ss{s, len, s, len, len, acc_t(1) / c_s};
  const tiles::RowProduct<acc_t> st{s, len, t, len, len,
                                    acc_t(1) / std::sqrt(acc_t(c_s) * acc_t(c_t))};
  return tiles::gram_tiles(&tt, 1, c_t, c_t, true, nullptr, 0) +
         tiles::gram_tiles(&ss, 1, c_s, c_s, true, nullptr, 0) -
         2 * tiles::gram_tiles(&st, 1, c_s, c_t, false, nullptr, 0);
}

struct BackwardArgs {
  bool spatial, need_s, need_t;
  double k;  // 4·grad/B
};

template <typename scalar_t>
void backward_sample(const at::Tensor& f_s, const at::Tensor& f_t, const at::Tensor& norm_s,
                     const at::Tensor& norm_t, int64_t b, const BackwardArgs& args,
                     at::Tensor& grad_s, at::Tensor& grad_t, at::opmath_type<scalar_t>* scratch) {
  using acc_t = at::opmath_type<scalar_t>;
  using tiles::MatrixTerm;
  const int64_t c_s = f_s.size(1), c_t = f_t.size(1), len = f_s.size(2);
  const acc_t* ns = norm_s.data_ptr<acc_t>() + b * c_s;
  const acc_t* nt = norm_t.data_ptr<acc_t>() + b * c_t;
  acc_t *inv_s, *inv_t;
  const acc_t* s = pack_normalized(SampleRows<scalar_t>(f_s, b), c_s, ns, false, scratch, inv_s);
  const acc_t* t = pack_normalized(SampleRows<scalar_t>(f_t, b), c_t, nt, false, scratch, inv_t);
  acc_t* ds = scratch;
  acc_t* dt = ds + c_s * len;
  acc_t* grams = dt + c_t * len;
  const acc_t cross = static_cast<acc_t>(-args.k / (double(c_s) * c_t));
  if (args.spatial) {
    // P_s = SᵀS: rows p of Sᵀ are columns of S (strides 1, len).
    acc_t* p_s = grams;
    const MatrixTerm<acc_t> gram_s{s, 1, len, s, len, c_s, acc_t(1)};
    tiles::apply_rows(&gram_s, 1, len, len, false, p_s, len);
    if (args.need_s) {  // E = P_s/C_s − TᵀT/C_t, dS = k/C_s · S E
      acc_t* e = p_s + len * len;
      for (int64_t i = 0; i < len * len; ++i) e[i] = p_s[i] / acc_t(c_s);
      const MatrixTerm<acc_t> gram_t{t, 1, len, t, len, c_t, acc_t(-1) / c_t};
      tiles::apply_rows(&gram_t, 1, len, len, true, e, len);
      const MatrixTerm<acc_t> apply{s, len, 1, e, len, len, static_cast<acc_t>(args.k / c_s)};
      tiles::apply_rows(&apply, 1, c_s, len, false, ds, len);
    }
    if (args.need_t) {  // dT = −k/(C_s C_t) · T P_s
      const MatrixTerm<acc_t> apply{t, len, 1, p_s, len, len, cross};
      tiles::apply_rows(&apply, 1, c_t, len, false, dt, len);
    }
  } else {
    acc_t* k_st = grams;  // S Tᵀ (C_s × C_t)
    const tiles::RowProduct<acc_t> st{s, len, t, len, len, acc_t(1)};
    tiles::gram_tiles(&st, 1, c_s, c_t, false, k_st, c_t);
    if (args.need_s) {  // dS = k (S Sᵀ S / C_s² − S Tᵀ T / (C_s C_t))
      acc_t* k_ss = k_st + c_s * c_t;
      const tiles::RowProduct<acc_t> ss{s, len, s, len, len, acc_t(1)};
      tiles::gram_tiles(&ss, 1, c_s, c_s, false, k_ss, c_s);
      const MatrixTerm<acc_t> terms[2] = {
          {k_ss, c_s, 1, s, len, c_s, static_cast<acc_t>(args.k / (double(c_s) * c_s))},
          {k_st, c_t, 1, t, len, c_t, cross}};
      tiles::apply_rows(terms, 2, c_s, len, false, ds, len);
    }
    if (args.need_t) {  // dT = −k/(C_s C_t) · (S Tᵀ)ᵀ S
      const MatrixTerm<acc_t> apply{k_st, 1, c_t, s, len, c_s, cross};
      tiles::apply_rows(&apply, 1, c_t, len, false, dt, len);
    }
  }
  if (args.need_s) {
    normalize_backward(s, ds, ns, inv_s, c_s, len, grad_s.data_ptr<scalar_t>() + b * c_s * len);
  }
  if (args.need_t) {
    normalize_backward(t, dt, nt, inv_t, c_t, len, grad_t.data_ptr<scalar_t>() + b * c_t * len);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> nst_forward_cpu(const at::Tensor& f_s,
                                                               const at::Tensor& f_t,
                                                               bool spatial) {
  check_maps(f_s, "f_s");
  check_maps(f_t, "f_t");
  const int64_t batch = f_s.size(0), c_s = f_s.size(1), c_t = f_t.size(1), len = f_s.size(2);
  TORCH_CHECK(f_t.size(0) == batch && f_t.size(2) == len, "f_t ", f_t.sizes(),
              " does not match f_s ", f_s.sizes());
  const auto acc = f_s.options().dtype(acc_type(f_s));
  at::Tensor norm_s = at::empty({batch, c_s}, acc), norm_t = at::empty({batch, c_t}, acc);
  std::vector<double> partial(batch);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f_s.scalar_type(), "nst_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    ThreadScratch<acc_t> scratch((c_s + c_t) * (len + 1), f_s);
    acc_t* ns = norm_s.data_ptr<acc_t>();
    acc_t* nt = norm_t.data_ptr<acc_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        partial[b] = forward_sample<scalar_t>(f_s, f_t, b, spatial, ns + b * c_s, nt + b * c_t,
                                              scratch.local());
      }
    });
  });
  const double loss = std::accumulate(partial.begin(), partial.end(), 0.0) / batch;
  return {at::scalar_tensor(loss, f_s.options()), norm_s, norm_t};
}

std::tuple<at::Tensor, at::Tensor> nst_backward_cpu(const at::Tensor& grad, const at::Tensor& f_s,
                                                    const at::Tensor& f_t, const at::Tensor& norm_s,
                                                    const at::Tensor& norm_t, bool spatial,
                                                    bool need_s, bool need_t) {
  check_maps(f_s, "f_s");
  check_maps(f_t, "f_t");
  const int64_t batch = f_s.size(0), c_s = f_s.size(1), c_t = f_t.size(1), len = f_s.size(2);
  TORCH_CHECK(norm_s.scalar_type() == acc_type(f_s) && norm_s.is_contiguous() &&
                  norm_t.scalar_type() == acc_type(f_s) && norm_t.is_contiguous(),
              "norm_s and norm_t must be contiguous ", acc_type(f_s), " tensors");
  const BackwardArgs args{spatial, need_s, need_t, 4.0 * grad.item<double>() / batch};
  const auto grad_shape = [&](bool needed, int64_t channels) {
    return needed ? std::vector<int64_t>{batch, channels, len} : std::vector<int64_t>{0};
  };
  at::Tensor grad_s = at::empty(grad_shape(need_s, c_s), f_s.options());
  at::Tensor grad_t = at::empty(grad_shape(need_t, c_t), f_t.options());
  const int64_t grams = spatial ? 2 * len * len : c_s * c_s + c_s * c_t;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f_s.scalar_type(), "nst_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    ThreadScratch<acc_t> scratch((c_s + c_t) * (2 * len + 1) + grams, f_s);
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        backward_sample<scalar_t>(f_s, f_t, norm_s, norm_t, b, args, grad_s, grad_t,
                                  scratch.local());
      }
    });
  });
  return {grad_s, grad_t};
}

}  // namespace tltorch_ext
