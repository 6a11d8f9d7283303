// Batched matrix products with fused row normalization, shared by the FSP and NST CUDA kernels
// (torch-free: plain pointers, sizes, streams).
//
// launch_products computes, per sample b and per 64 × 64 output tile,
//     Y_b = Σ_p coef_p · A_{p,b} · B_{p,b}        (one or two products, each with its own K)
// where an operand is a strided view of a (B, rows, cols) array of any floating type, optionally
// with one axis a channel axis whose values are divided by max(norm, ε) on load (NST's L2
// normalization). The tile is accumulated in registers (float, or double for double data) and
// then written (times an optional device scalar) and/or squared and summed into one partial sum
// per tile; with `symmetric`, tiles below the diagonal compute nothing and those above count twice.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "dtype.cuh"

namespace tltorch_ext::cuda {

// Per sample b, element (i, j) at data + b * batch_stride + i * stride_i + j * stride_j.
struct MatrixView {
  const void* data = nullptr;
  DType dtype = DType::kFloat;
  int64_t batch_stride = 0;
  int64_t stride_i = 0;
  int64_t stride_j = 0;
  // Normalization: the index along norm_axis (0: i, 1: j, -1: none) is a channel c, and values
  // are divided by max(norms[b * norms_batch_stride + c], eps) (norms in the accumulation type).
  const void* norms = nullptr;
  int64_t norms_batch_stride = 0;
  int norm_axis = -1;

  MatrixView transposed() const {
    MatrixView t = *this;
    t.stride_i = stride_j;
    t.stride_j = stride_i;
    t.norm_axis = norm_axis < 0 ? -1 : 1 - norm_axis;
    return t;
  }
};

// (B, C, L) feature maps of any strides.
struct FeatureMaps {
  const void* data = nullptr;
  DType dtype = DType::kFloat;
  int64_t batch_stride = 0;
  int64_t channel_stride = 0;
  int64_t position_stride = 0;
  int64_t channels = 0;
  int64_t positions = 0;

  // Channels on the rows (C × L per sample), optionally normalized by per-channel norms.
  MatrixView rows(const void* norms = nullptr) const {
    MatrixView v;
    v.data = data;
    v.dtype = dtype;
    v.batch_stride = batch_stride;
    v.stride_i = channel_stride;
    v.stride_j = position_stride;
    v.norms = norms;
    v.norms_batch_stride = channels;
    v.norm_axis = norms == nullptr ? -1 : 0;
    return v;
  }
};

struct Product {
  MatrixView a;  // rows × inner
  MatrixView b;  // inner × cols
  int64_t inner = 0;
  double coef = 1.0;
};

struct ProductsArgs {
  Product products[2];
  int count = 1;
  int64_t batch = 0;
  int64_t rows = 0;
  int64_t cols = 0;
  bool double_acc = false;  // accumulate in double (double data), else float
  double eps = 1e-12;
  // Written result (null: none): Y · (*grad when grad is given, an accumulation-type scalar).
  void* out = nullptr;
  DType out_dtype = DType::kFloat;
  int64_t out_batch_stride = 0;
  int64_t out_stride_i = 0;
  int64_t out_stride_j = 0;
  const void* grad = nullptr;
  // Per-tile Σ Y² (null: none), (batch, product_tiles(rows, cols)) in the accumulation type.
  void* partial = nullptr;
  bool symmetric = false;
};

int64_t product_tiles(int64_t rows, int64_t cols);
cudaError_t launch_products(const ProductsArgs& args, cudaStream_t stream);

// out[0] = Σ_i weights[i] · Σ partials[i][0:counts[i]] · scale, in out_dtype (one to three sums).
cudaError_t launch_weighted_sum(const void* const* partials, const int64_t* counts,
                                const double* weights, int terms, double scale, bool double_acc,
                                void* out, DType out_dtype, cudaStream_t stream);

// Bytes per accumulation-type value, and a workspace carved into 256-byte-aligned pieces.
inline size_t acc_bytes(bool double_acc) { return double_acc ? 8 : 4; }

class Workspace {
 public:
  explicit Workspace(void* base) : base_(static_cast<char*>(base)) {}
  // The next piece of `bytes` (sizes only, when constructed with a null base).
  void* take(size_t bytes) {
    void* piece = base_ == nullptr ? nullptr : base_ + used_;
    used_ += (bytes + 255) / 256 * 256;
    return piece;
  }
  size_t used() const { return used_; }

 private:
  char* base_;
  size_t used_ = 0;
};

}  // namespace tltorch_ext::cuda
