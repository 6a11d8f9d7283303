// Register-blocked matrix products of the FSP and NST CPU kernels (csrc/cpu/fsp.cpp, nst.cpp).
//
// Operands are row-major panels in the accumulation type (float, or double for double inputs):
// the callers pack each sample's rows (converted from half types, normalized for NST) into
// per-thread scratch, or use the input in place when it already has that layout.
// - gram_tiles: Y = Σ_p coef_p · A_p · B_pᵀ (row dot products, the reduction over contiguous
//   rows), visited in 4 × 4 register blocks: returns Σ Y² and optionally writes Y. With
//   `symmetric`, only blocks on or above the diagonal are computed and off-diagonal ones count
//   twice. So a Gram is reduced without ever being stored.
// - apply_rows: out = (accumulate ? out : 0) + Σ_p alpha_p · M_p · X_p, 4 output rows × 32
//   columns held in registers while the inner index runs (outer-product form, X_p row-major,
//   M_p any strides, so Mᵀ is free).
// Both are compiled for AVX-512, AVX2+FMA and baseline x86-64 and picked at run time
// (target_clones), elsewhere for the compiler's default target.
#pragma once

#include <cstdint>

namespace tltorch_ext::tiles {

template <typename T>
struct RowProduct {
  const T* a;  // rows of A, row i at a + i * lda
  int64_t lda;
  const T* b;  // rows of B
  int64_t ldb;
  int64_t len;  // the reduction length (row length)
  T coef;
};

template <typename T>
struct MatrixTerm {
  const T* m;  // M[i, j] at m + i * m_row + j * m_col
  int64_t m_row;
  int64_t m_col;
  const T* x;  // X[j, :] at x + j * ldx
  int64_t ldx;
  int64_t inner;  // the number of j
  T alpha;
};

// Σ_ij Y_ij² over rows × cols of Y = Σ_p coef_p A_p B_pᵀ (1 or 2 products); writes Y to out
// (leading dimension ldo) unless out is null.
double gram_tiles(const RowProduct<float>* products, int count, int64_t rows, int64_t cols,
                  bool symmetric, float* out, int64_t ldo);
double gram_tiles(const RowProduct<double>* products, int count, int64_t rows, int64_t cols,
                  bool symmetric, double* out, int64_t ldo);

// out[i, :len] (=|+=) Σ_p alpha_p Σ_j M_p[i, j] X_p[j, :len] for i < rows (1 or 2 terms).
void apply_rows(const MatrixTerm<float>* terms, int count, int64_t rows, int64_t len,
                bool accumulate, float* out, int64_t ldo);
void apply_rows(const MatrixTerm<double>* terms, int count, int64_t rows, int64_t len,
                bool accumulate, double* out, int64_t ldo);

}  // namespace tltorch_ext::tiles
