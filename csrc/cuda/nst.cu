// NST on CUDA (docs/api_fsp_nst.md): row norms, the products of tile_products.cu arranged for
// both Gram sides, and the normalization's gradient; see nst.cuh.
#include <cmath>

#include "nst.cuh"
#include "values.cuh"

namespace tltorch_ext::cuda {
namespace {

constexpr double kEps = 1e-12;
constexpr int kRowThreads = 256;  // one warp per row, 8 rows per block

// Offset of element p of row r = b·C + c.
__device__ __forceinline__ int64_t row_offset(const FeatureMaps& f, int64_t row) {
  const int64_t b = row / f.channels;
  return b * f.batch_stride + (row - b * f.channels) * f.channel_stride;
}

template <typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    row_norms(const FeatureMaps f, int64_t rows, acc_t* norms) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * kRowThreads + threadIdx.x) / 32;
  if (row >= rows) return;  // whole warps leave together
  const int64_t base = row_offset(f, row);
  acc_t squares = 0;
  for (int64_t p = threadIdx.x % 32; p < f.positions; p += 32) {
    const acc_t v = load_value<acc_t>(f.data, f.dtype, base + p * f.position_stride);
    squares += v * v;
  }
  squares = warp_sum(squares);
  if (threadIdx.x % 32 == 0) norms[row] = sqrt(squares);
}

// df = (ds − s⟨s, ds⟩)/max(‖f‖, ε) per row (the radial term only where ‖f‖ > ε); ds is
// contiguous (rows, L) in the accumulation type, df contiguous in the maps' dtype.
template <typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    normalize_backward(const FeatureMaps f, int64_t rows, const acc_t* norms, const acc_t* ds,
                       void* out) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * kRowThreads + threadIdx.x) / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const int64_t base = row_offset(f, row);
  const acc_t eps = static_cast<acc_t>(kEps);
  const acc_t norm = norms[row];
  const acc_t inv = acc_t(1) / (norm > eps ? norm : eps);
  const acc_t* ds_row = ds + row * f.positions;
  acc_t dot = 0;
  for (int64_t p = lane; p < f.positions; p += 32) {
    dot += load_value<acc_t>(f.data, f.dtype, base + p * f.position_stride) * inv * ds_row[p];
  }
  const acc_t radial = norm > eps ? warp_sum(dot) : acc_t(0);
  for (int64_t p = lane; p < f.positions; p += 32) {
    const acc_t s = load_value<acc_t>(f.data, f.dtype, base + p * f.position_stride) * inv;
    store_value<acc_t>(out, f.dtype, row * f.positions + p, (ds_row[p] - s * radial) * inv);
  }
}

bool is_double(const FeatureMaps& f) { return f.dtype == DType::kDouble; }
DType acc_dtype(bool double_acc) { return double_acc ? DType::kDouble : DType::kFloat; }

unsigned row_blocks(int64_t rows) {
  return static_cast<unsigned>((rows + kRowThreads / 32 - 1) / (kRowThreads / 32));
}

cudaError_t launch_row_norms(const FeatureMaps& f, int64_t batch, void* norms,
                             cudaStream_t stream) {
  const int64_t rows = batch * f.channels;
  if (is_double(f)) {
    row_norms<double><<<row_blocks(rows), kRowThreads, 0, stream>>>(f, rows,
                                                                     static_cast<double*>(norms));
  } else {
    row_norms<float><<<row_blocks(rows), kRowThreads, 0, stream>>>(f, rows,
                                                                    static_cast<float*>(norms));
  }
  return cudaGetLastError();
}

cudaError_t launch_normalize_backward(const FeatureMaps& f, int64_t batch, const void* norms,
                                      const void* ds, void* out, cudaStream_t stream) {
  const int64_t rows = batch * f.channels;
  if (is_double(f)) {
    normalize_backward<double><<<row_blocks(rows), kRowThreads, 0, stream>>>(
        f, rows, static_cast<const double*>(norms), static_cast<const double*>(ds), out);
  } else {
    normalize_backward<float><<<row_blocks(rows), kRowThreads, 0, stream>>>(
        f, rows, static_cast<const float*>(norms), static_cast<const float*>(ds), out);
  }
  return cudaGetLastError();
}

// A contiguous (B, rows, cols) accumulation-type buffer as a product operand.
MatrixView buffer_view(const void* data, int64_t rows, int64_t cols, bool double_acc) {
  MatrixView v;
  v.data = data;
  v.dtype = acc_dtype(double_acc);
  v.batch_stride = rows * cols;
  v.stride_i = cols;
  v.stride_j = 1;
  return v;
}

ProductsArgs products_args(int64_t batch, int64_t rows, int64_t cols, bool double_acc) {
  ProductsArgs args;
  args.batch = batch;
  args.rows = rows;
  args.cols = cols;
  args.double_acc = double_acc;
  args.eps = kEps;
  return args;
}

void write_to(ProductsArgs& args, void* out, bool double_acc) {
  args.out = out;
  args.out_dtype = acc_dtype(double_acc);
  args.out_batch_stride = args.rows * args.cols;
  args.out_stride_i = args.cols;
  args.out_stride_j = 1;
}

Product product(const MatrixView& a, const MatrixView& b, int64_t inner, double coef) {
  Product p;
  p.a = a;
  p.b = b;
  p.inner = inner;
  p.coef = coef;
  return p;
}

// Workspace layout of the forward: the partial sums of each reduction.
struct ForwardPieces {
  void* partial[3];
  int64_t counts[3];
  int terms;

  ForwardPieces(Workspace& ws, int64_t batch, int64_t c_s, int64_t c_t, int64_t len,
                bool spatial, bool double_acc) {
    const int64_t shapes[3][2] = {{c_t, c_t}, {c_s, c_s}, {c_s, c_t}};
    terms = spatial ? 1 : 3;
    for (int t = 0; t < terms; ++t) {
      counts[t] = batch * (spatial ? product_tiles(len, len)
                                   : product_tiles(shapes[t][0], shapes[t][1]));
      partial[t] = ws.take(counts[t] * acc_bytes(double_acc));
    }
  }
};

// Workspace layout of the backward.
struct BackwardPieces {
  void* ds;
  void* dt;
  void* gram_a;  // spatial: P_s (B, L, L); channel: S Tᵀ (B, C_s, C_t)
  void* gram_b;  // spatial: E (B, L, L); channel: S Sᵀ (B, C_s, C_s)

  BackwardPieces(Workspace& ws, int64_t batch, int64_t c_s, int64_t c_t, int64_t len,
                 bool spatial, bool need_s, bool need_t, bool double_acc) {
    const size_t value = acc_bytes(double_acc);
    ds = need_s ? ws.take(batch * c_s * len * value) : nullptr;
    dt = need_t ? ws.take(batch * c_t * len * value) : nullptr;
    if (spatial) {
      gram_a = need_t ? ws.take(batch * len * len * value) : nullptr;
      gram_b = need_s ? ws.take(batch * len * len * value) : nullptr;
    } else {
      gram_a = ws.take(batch * c_s * c_t * value);
      gram_b = need_s ? ws.take(batch * c_s * c_s * value) : nullptr;
    }
  }
};

}  // namespace

size_t nst_forward_workspace(int64_t batch, int64_t c_s, int64_t c_t, int64_t len, bool spatial,
                             bool double_acc) {
  Workspace sizes(nullptr);
  const ForwardPieces pieces(sizes, batch, c_s, c_t, len, spatial, double_acc);
  return sizes.used();
}

cudaError_t nst_forward(const FeatureMaps& f_s, const FeatureMaps& f_t, int64_t batch,
                        bool spatial, void* loss, void* norm_s, void* norm_t, void* workspace,
                        cudaStream_t stream) {
  const bool double_acc = is_double(f_s);
  const int64_t c_s = f_s.channels, c_t = f_t.channels, len = f_s.positions;
  cudaError_t status = launch_row_norms(f_s, batch, norm_s, stream);
  if (status == cudaSuccess) status = launch_row_norms(f_t, batch, norm_t, stream);
  if (status != cudaSuccess) return status;
  Workspace ws(workspace);
  const ForwardPieces pieces(ws, batch, c_s, c_t, len, spatial, double_acc);
  const MatrixView s = f_s.rows(norm_s), t = f_t.rows(norm_t);
  if (spatial) {  // Σ (SᵀS/C_s − TᵀT/C_t)²
    ProductsArgs args = products_args(batch, len, len, double_acc);
    args.products[0] = product(s.transposed(), s, c_s, 1.0 / c_s);
    args.products[1] = product(t.transposed(), t, c_t, -1.0 / c_t);
    args.count = 2;
    args.symmetric = true;
    args.partial = pieces.partial[0];
    status = launch_products(args, stream);
  } else {  // ‖T Tᵀ/C_t‖², ‖S Sᵀ/C_s‖², ‖S Tᵀ‖²/(C_s C_t)
    const MatrixView lhs[3] = {t, s, s}, rhs[3] = {t, s, t};
    const int64_t rows[3] = {c_t, c_s, c_s}, cols[3] = {c_t, c_s, c_t};
    const double coefs[3] = {1.0 / c_t, 1.0 / c_s, 1.0 / std::sqrt(double(c_s) * c_t)};
    for (int term = 0; term < 3 && status == cudaSuccess; ++term) {
      ProductsArgs args = products_args(batch, rows[term], cols[term], double_acc);
      args.products[0] = product(lhs[term], rhs[term].transposed(), len, coefs[term]);
      args.symmetric = term < 2;
      args.partial = pieces.partial[term];
      status = launch_products(args, stream);
    }
  }
  if (status != cudaSuccess) return status;
  const double weights[3] = {1.0, 1.0, -2.0};
  return launch_weighted_sum(pieces.partial, pieces.counts, weights, pieces.terms,
                             1.0 / batch, double_acc, loss, f_s.dtype, stream);
}

size_t nst_backward_workspace(int64_t batch, int64_t c_s, int64_t c_t, int64_t len, bool spatial,
                              bool need_s, bool need_t, bool double_acc) {
  Workspace sizes(nullptr);
  const BackwardPieces pieces(sizes, batch, c_s, c_t, len, spatial, need_s, need_t, double_acc);
  return sizes.used();
}

cudaError_t nst_backward(const FeatureMaps& f_s, const FeatureMaps& f_t, int64_t batch,
                         const void* norm_s, const void* norm_t, bool spatial, const void* grad,
                         void* grad_s, void* grad_t, void* workspace, cudaStream_t stream) {
  const bool double_acc = is_double(f_s);
  const bool need_s = grad_s != nullptr, need_t = grad_t != nullptr;
  const int64_t c_s = f_s.channels, c_t = f_t.channels, len = f_s.positions;
  Workspace ws(workspace);
  const BackwardPieces pieces(ws, batch, c_s, c_t, len, spatial, need_s, need_t, double_acc);
  const MatrixView s = f_s.rows(norm_s), t = f_t.rows(norm_t);
  const double k = 4.0 / batch, cross = -k / (double(c_s) * c_t);
  // Writes the product(s) into `out` ((B, rows, cols) accumulation type), times grad if given.
  const auto run = [&](int64_t rows, int64_t cols, const Product* terms, int count, void* out,
                       const void* scale) {
    ProductsArgs args = products_args(batch, rows, cols, double_acc);
    for (int p = 0; p < count; ++p) args.products[p] = terms[p];
    args.count = count;
    args.grad = scale;
    write_to(args, out, double_acc);
    return launch_products(args, stream);
  };
  cudaError_t status = cudaSuccess;
  if (spatial) {
    if (need_t) {  // P_s = SᵀS, dT = −k/(C_s C_t) · T P_s
      const Product p_s = product(s.transposed(), s, c_s, 1.0);
      const MatrixView p_s_view = buffer_view(pieces.gram_a, len, len, double_acc);
      const Product apply = product(t, p_s_view, len, cross);
      status = run(len, len, &p_s, 1, pieces.gram_a, nullptr);
      if (status == cudaSuccess) status = run(c_t, len, &apply, 1, pieces.dt, grad);
    }
    if (need_s && status == cudaSuccess) {  // E = SᵀS/C_s − TᵀT/C_t, dS = k/C_s · S E
      const Product e[2] = {product(s.transposed(), s, c_s, 1.0 / c_s),
                            product(t.transposed(), t, c_t, -1.0 / c_t)};
      const MatrixView e_view = buffer_view(pieces.gram_b, len, len, double_acc);
      const Product apply = product(s, e_view, len, k / c_s);
      status = run(len, len, e, 2, pieces.gram_b, nullptr);
      if (status == cudaSuccess) status = run(c_s, len, &apply, 1, pieces.ds, grad);
    }
  } else {
    const MatrixView k_st = buffer_view(pieces.gram_a, c_s, c_t, double_acc);
    const Product st = product(s, t.transposed(), len, 1.0);
    status = run(c_s, c_t, &st, 1, pieces.gram_a, nullptr);
    if (need_s && status == cudaSuccess) {  // dS = k (S Sᵀ S/C_s² − S Tᵀ T/(C_s C_t))
      const Product ss = product(s, s.transposed(), len, 1.0);
      const MatrixView k_ss = buffer_view(pieces.gram_b, c_s, c_s, double_acc);
      const Product apply[2] = {product(k_ss, s, c_s, k / (double(c_s) * c_s)),
                                product(k_st, t, c_t, cross)};
      status = run(c_s, c_s, &ss, 1, pieces.gram_b, nullptr);
      if (status == cudaSuccess) status = run(c_s, len, apply, 2, pieces.ds, grad);
    }
    if (need_t && status == cudaSuccess) {  // dT = −k/(C_s C_t) · (S Tᵀ)ᵀ S
      const Product apply = product(k_st.transposed(), s, c_s, cross);
      status = run(c_t, len, &apply, 1, pieces.dt, grad);
    }
  }
  if (need_s && status == cudaSuccess) {
    status = launch_normalize_backward(f_s, batch, norm_s, pieces.ds, grad_s, stream);
  }
  if (need_t && status == cudaSuccess) {
    status = launch_normalize_backward(f_t, batch, norm_t, pieces.dt, grad_t, stream);
  }
  return status;
}

}  // namespace tltorch_ext::cuda
