// NST on CPU (docs/api_fsp_nst.md); same functions and results as tltorch_ext/reference/nst.py.
//
// Parallel over samples. A sample's rows are normalized (s_i = f_i / max(‖f_i‖, ε)) while being
// packed into per-thread scratch (also transposed, for the channel side). Forward reduces the
// Grams block by block in registers (tile_products.h): spatial, Σ (P_s/C_s − P_t/C_t)² over the
// upper triangle of HW × HW, both Grams accumulated into the same registers; channel,
// ‖T Tᵀ‖²/C_t² + ‖S Sᵀ‖²/C_s² − 2‖S Tᵀ‖²/(C_s C_t), the self terms on the upper triangle.
// Backward recomputes the normalized rows and one sample's Grams (P_s and E, or S Sᵀ and S Tᵀ) in
// scratch, applies them to S and T with the same kernel, and takes the result through the
// normalization row by row. Accumulation is float32 (double for double inputs).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "feature_rows.h"
#include "tile_products.h"

namespace tltorch_ext {
namespace {

constexpr double kEps = 1e-12;
constexpr tiles::Reduce kWrite = tiles::Reduce::kNone;
constexpr tiles::Reduce kSquares = tiles::Reduce::kSquares;
constexpr tiles::Reduce kSymmetricSquares = tiles::Reduce::kSymmetricSquares;

void check_maps(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 3, name, " must be (B, C, HW), got shape ", t.sizes());
}

// Normalized rows of one sample packed into scratch: inv[i] = 1 / max(norm[i], ε) first, then
// the rows S (count × len) and, when asked, their transpose Sᵀ (len × count).
template <typename acc_t, typename scalar_t>
struct NormalizedRows {
  const acc_t* inv;
  const acc_t* rows;
  const acc_t* columns;  // Sᵀ, or null

  NormalizedRows(const SampleRows<scalar_t>& f, int64_t count, const acc_t* norms, bool transposed,
                 acc_t*& scratch) {
    acc_t* inverse = scratch;
    for (int64_t i = 0; i < count; ++i) inverse[i] = acc_t(1) / std::max(norms[i], acc_t(kEps));
    acc_t* packed = inverse + count;
    pack_rows<acc_t>(f, count, inverse, false, packed);
    acc_t* packed_t = packed + count * f.len;
    if (transposed) pack_rows<acc_t>(f, count, inverse, true, packed_t);
    scratch = packed_t + (transposed ? count * f.len : 0);
    inv = inverse;
    rows = packed;
    columns = transposed ? packed_t : nullptr;
  }
};

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

// The channel side packs the transposes too when its rows are short (see channel_gram).
bool uses_columns(bool spatial, int64_t len) { return !spatial && !tiles::prefer_row_dots(len); }

// Scratch values NormalizedRows takes.
int64_t normalized_rows_size(int64_t count, int64_t len, bool columns) {
  return count * (1 + len * (columns ? 2 : 1));
}

// A channel-side Gram coef · A Bᵀ (C_a × C_b) of normalized rows: reduced or written to out.
template <typename acc_t, typename scalar_t>
double channel_gram(const NormalizedRows<acc_t, scalar_t>& a,
                    const NormalizedRows<acc_t, scalar_t>& b, int64_t c_a, int64_t c_b,
                    int64_t len, acc_t coef, tiles::Reduce reduce, acc_t* out) {
  if (b.columns == nullptr) {  // long rows: row dot products
    const tiles::RowProduct<acc_t> term{a.rows, len, b.rows, len, len, coef};
    return tiles::row_dots(&term, 1, c_a, c_b, reduce, out, c_b);
  }
  const tiles::MatrixTerm<acc_t> term{a.rows, len, 1, b.columns, c_b, len, coef};
  return tiles::products(&term, 1, c_a, c_b, reduce, false, out, c_b);
}

// Multiply-adds of one sample's forward Grams.
int64_t sample_work(int64_t c_s, int64_t c_t, int64_t len, bool spatial) {
  return spatial ? len * len * (c_s + c_t) / 2 : len * (c_s + c_t) * (c_s + c_t) / 2;
}

template <typename scalar_t>
double forward_sample(const at::Tensor& f_s, const at::Tensor& f_t, int64_t b, bool spatial,
                      at::opmath_type<scalar_t>* norm_s, at::opmath_type<scalar_t>* norm_t,
                      at::opmath_type<scalar_t>* scratch) {
  using acc_t = at::opmath_type<scalar_t>;
  using Term = tiles::MatrixTerm<acc_t>;
  const SampleRows<scalar_t> f_s_rows(f_s, b), f_t_rows(f_t, b);
  const int64_t c_s = f_s.size(1), c_t = f_t.size(1), len = f_s.size(2);
  for (int64_t i = 0; i < c_s; ++i) norm_s[i] = row_norm<acc_t>(f_s_rows, i);
  for (int64_t i = 0; i < c_t; ++i) norm_t[i] = row_norm<acc_t>(f_t_rows, i);
  const bool columns = uses_columns(spatial, len);
  const NormalizedRows<acc_t, scalar_t> s(f_s_rows, c_s, norm_s, columns, scratch);
  const NormalizedRows<acc_t, scalar_t> t(f_t_rows, c_t, norm_t, columns, scratch);
  if (spatial) {  // Σ (SᵀS/C_s − TᵀT/C_t)², Sᵀ read from S's rows with swapped strides
    const Term e[2] = {{s.rows, 1, len, s.rows, len, c_s, acc_t(1) / c_s},
                       {t.rows, 1, len, t.rows, len, c_t, acc_t(-1) / c_t}};
    return tiles::products(e, 2, len, len, kSymmetricSquares, false, nullptr, 0);
  }
  const acc_t cross = acc_t(1) / std::sqrt(acc_t(c_s) * acc_t(c_t));
  acc_t* const no_output = nullptr;
  return channel_gram(t, t, c_t, c_t, len, acc_t(1) / c_t, kSymmetricSquares, no_output) +
         channel_gram(s, s, c_s, c_s, len, acc_t(1) / c_s, kSymmetricSquares, no_output) -
         2 * channel_gram(s, t, c_s, c_t, len, cross, kSquares, no_output);
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
  using Term = tiles::MatrixTerm<acc_t>;
  const int64_t c_s = f_s.size(1), c_t = f_t.size(1), len = f_s.size(2);
  const acc_t* ns = norm_s.data_ptr<acc_t>() + b * c_s;
  const acc_t* nt = norm_t.data_ptr<acc_t>() + b * c_t;
  const bool columns = uses_columns(args.spatial, len);
  const NormalizedRows<acc_t, scalar_t> s(SampleRows<scalar_t>(f_s, b), c_s, ns, columns, scratch);
  const NormalizedRows<acc_t, scalar_t> t(SampleRows<scalar_t>(f_t, b), c_t, nt, columns, scratch);
  acc_t* ds = scratch;
  acc_t* dt = ds + c_s * len;
  acc_t* grams = dt + c_t * len;
  const acc_t cross = static_cast<acc_t>(-args.k / (double(c_s) * c_t));
  if (args.spatial) {
    acc_t* p_s = grams;  // SᵀS
    const Term gram_s{s.rows, 1, len, s.rows, len, c_s, acc_t(1)};
    tiles::products(&gram_s, 1, len, len, kWrite, false, p_s, len);
    if (args.need_s) {  // E = P_s/C_s − TᵀT/C_t, dS = k/C_s · S E
      acc_t* e = p_s + len * len;
      for (int64_t i = 0; i < len * len; ++i) e[i] = p_s[i] / acc_t(c_s);
      const Term gram_t{t.rows, 1, len, t.rows, len, c_t, acc_t(-1) / c_t};
      tiles::products(&gram_t, 1, len, len, kWrite, true, e, len);
      const Term apply{s.rows, len, 1, e, len, len, static_cast<acc_t>(args.k / c_s)};
      tiles::products(&apply, 1, c_s, len, kWrite, false, ds, len);
    }
    if (args.need_t) {  // dT = −k/(C_s C_t) · T P_s
      const Term apply{t.rows, len, 1, p_s, len, len, cross};
      tiles::products(&apply, 1, c_t, len, kWrite, false, dt, len);
    }
  } else {
    acc_t* k_st = grams;  // S Tᵀ (C_s × C_t)
    channel_gram(s, t, c_s, c_t, len, acc_t(1), kWrite, k_st);
    if (args.need_s) {  // dS = k (S Sᵀ S / C_s² − S Tᵀ T / (C_s C_t))
      acc_t* k_ss = k_st + c_s * c_t;
      channel_gram(s, s, c_s, c_s, len, acc_t(1), kWrite, k_ss);
      const Term terms[2] = {
          {k_ss, c_s, 1, s.rows, len, c_s, static_cast<acc_t>(args.k / (double(c_s) * c_s))},
          {k_st, c_t, 1, t.rows, len, c_t, cross}};
      tiles::products(terms, 2, c_s, len, kWrite, false, ds, len);
    }
    if (args.need_t) {  // dT = −k/(C_s C_t) · (S Tᵀ)ᵀ S
      const Term apply{k_st, 1, c_t, s.rows, len, c_s, cross};
      tiles::products(&apply, 1, c_t, len, kWrite, false, dt, len);
    }
  }
  if (args.need_s) {
    normalize_backward(s.rows, ds, ns, s.inv, c_s, len,
                       grad_s.data_ptr<scalar_t>() + b * c_s * len);
  }
  if (args.need_t) {
    normalize_backward(t.rows, dt, nt, t.inv, c_t, len,
                       grad_t.data_ptr<scalar_t>() + b * c_t * len);
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
  const auto acc = f_s.options().dtype(at::toOpMathType(f_s.scalar_type()));
  at::Tensor norm_s = at::empty({batch, c_s}, acc), norm_t = at::empty({batch, c_t}, acc);
  std::vector<double> partial(batch);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f_s.scalar_type(), "nst_forward_cpu",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const bool columns = uses_columns(spatial, len);
    ThreadScratch<acc_t> scratch(normalized_rows_size(c_s, len, columns) +
                                     normalized_rows_size(c_t, len, columns),
                                 f_s);
    acc_t* ns = norm_s.data_ptr<acc_t>();
    acc_t* nt = norm_t.data_ptr<acc_t>();
    at::parallel_for(0, batch, grain_for(sample_work(c_s, c_t, len, spatial)),
                     [&](int64_t begin, int64_t end) {
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
  TORCH_CHECK(norm_s.scalar_type() == at::toOpMathType(f_s.scalar_type()) && norm_s.is_contiguous() &&
                  norm_t.scalar_type() == at::toOpMathType(f_s.scalar_type()) && norm_t.is_contiguous(),
              "norm_s and norm_t must be contiguous ", at::toOpMathType(f_s.scalar_type()), " tensors");
  const BackwardArgs args{spatial, need_s, need_t, 4.0 * grad.item<double>() / batch};
  const auto grad_shape = [&](bool needed, int64_t channels) {
    return needed ? std::vector<int64_t>{batch, channels, len} : std::vector<int64_t>{0};
  };
  at::Tensor grad_s = at::empty(grad_shape(need_s, c_s), f_s.options());
  at::Tensor grad_t = at::empty(grad_shape(need_t, c_t), f_t.options());
  // Per sample: the normalized rows, dS and dT, and P_s (+ E) or S Tᵀ (+ S Sᵀ).
  const bool columns = uses_columns(spatial, len);
  const int64_t grams =
      spatial ? (need_s ? 2 : 1) * len * len : c_s * c_t + (need_s ? c_s * c_s : 0);
  const int64_t per_thread = normalized_rows_size(c_s, len, columns) +
                             normalized_rows_size(c_t, len, columns) + (c_s + c_t) * len + grams;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f_s.scalar_type(), "nst_backward_cpu",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    ThreadScratch<acc_t> scratch(per_thread, f_s);
    at::parallel_for(0, batch, grain_for(2 * sample_work(c_s, c_t, len, spatial)),
                     [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        backward_sample<scalar_t>(f_s, f_t, norm_s, norm_t, b, args, grad_s, grad_t,
                                  scratch.local());
      }
    });
  });
  return {grad_s, grad_t};
}

// The schemas are defined here, with the CPU kernels; csrc/cuda/nst_binding.cpp adds CUDA ones.
TORCH_LIBRARY_FRAGMENT(tltorch_ext_C, m) {
  m.def("nst_forward(Tensor f_s, Tensor f_t, bool spatial) -> (Tensor, Tensor, Tensor)");
  m.def("nst_backward(Tensor grad, Tensor f_s, Tensor f_t, Tensor norm_s, Tensor norm_t, "
        "bool spatial, bool need_s, bool need_t) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(tltorch_ext_C, CPU, m) {
  m.impl("nst_forward", &nst_forward_cpu);
  m.impl("nst_backward", &nst_backward_cpu);
}

}  // namespace tltorch_ext
