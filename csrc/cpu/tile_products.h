// Register-blocked matrix products of the FSP and NST CPU kernels (csrc/cpu/fsp.cpp, nst.cpp).
//
// tiles::products computes Y = Σ_p alpha_p · M_p · X_p (one or two terms) in the outer-product
// form: a block of 8 rows × 16 columns of Y stays in vector registers while the inner index j
// runs, each step adding alpha·M[i, j] · X[j, c0:c0+16] (X row-major in the accumulation type, M
// any strides, so a transposed or strided view of packed rows costs nothing). Each finished
// block is then written, and/or squared and summed in registers, so a Gram whose sum of squares
// is wanted is never stored. Compiled for AVX-512, AVX2+FMA and baseline x86-64 and picked at
// load time (target_clones); elsewhere for the compiler's default target.
//
// tiles::row_dots computes Y = Σ_p coef_p · A_p · B_pᵀ from row dot products (4 × 4 blocks of
// them in registers, the reduction over contiguous rows): no transposed operand is needed, which
// makes it the faster choice for a Gram over long rows (prefer_row_dots).
#pragma once

#include <cstdint>

namespace tltorch_ext::tiles {

template <typename T>
struct MatrixTerm {
  const T* m;  // M[i, j] at m + i * m_row + j * m_col
  int64_t m_row;
  int64_t m_col;
  const T* x;  // X[j, :] at x + j * ldx, contiguous
  int64_t ldx;
  int64_t inner;  // the number of j
  T alpha;
};

template <typename T>
struct RowProduct {
  const T* a;  // A's row i at a + i * lda, contiguous
  int64_t lda;
  const T* b;  // B's row j at b + j * ldb, contiguous
  int64_t ldb;
  int64_t len;  // the reduction length
  T coef;
};

enum class Reduce {
  kNone,
  kSquares,           // Σ Y²
  kSymmetricSquares,  // Σ Y² of a symmetric Y (rows == cols) from its upper triangle; no write
};

// Y = Σ_p alpha_p M_p X_p over rows × cols (count = 1 or 2 terms). Unless out is null, writes Y
// to out[i * ldo + c] (adds to it when accumulate). Returns Σ Y² (0 for Reduce::kNone); with
// kSymmetricSquares, blocks wholly below the diagonal are skipped and the entries above it count
// twice.
double products(const MatrixTerm<float>* terms, int count, int64_t rows, int64_t cols,
                Reduce reduce, bool accumulate, float* out, int64_t ldo);
double products(const MatrixTerm<double>* terms, int count, int64_t rows, int64_t cols,
                Reduce reduce, bool accumulate, double* out, int64_t ldo);

// Y = Σ_p coef_p A_p B_pᵀ over rows × cols; out and reduce as in products().
double row_dots(const RowProduct<float>* terms, int count, int64_t rows, int64_t cols,
                Reduce reduce, float* out, int64_t ldo);
double row_dots(const RowProduct<double>* terms, int count, int64_t rows, int64_t cols,
                Reduce reduce, double* out, int64_t ldo);

// Below this reduction length a Gram goes faster through products() with one operand transposed
// (the horizontal sums of row_dots dominate); above it the transposed copy does.
constexpr int64_t kRowDotsMinLength = 256;
inline bool prefer_row_dots(int64_t len) { return len >= kRowDotsMinLength; }

}  // namespace tltorch_ext::tiles
