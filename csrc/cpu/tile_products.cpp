// Register-blocked products for the FSP and NST CPU kernels; see tile_products.h.
#include "tile_products.h"

#include <algorithm>

#include "isa_clones.h"

namespace tltorch_ext::tiles {
namespace {

// A register block: 8 rows × 16 columns (one AVX-512 register of floats per row); per inner step,
// 8 broadcasts of M, one load of X and 8 fused multiply-adds.
constexpr int64_t kRows = 8;
constexpr int kCols = 16;

// Σ w Y² over the block's valid entries, w as in products().
template <typename T, bool kSymmetric>
TLTORCH_EXT_INLINE double block_squares(const T (&acc)[kRows][kCols], int64_t i0, int64_t valid,
                                        int64_t c0, int n) {
  T total = 0;
  for (int64_t r = 0; r < valid; ++r) {
    const int64_t diagonal = i0 + r - c0;  // column index c of the diagonal in this row
#pragma omp simd reduction(+ : total)
    for (int c = 0; c < n; ++c) {
      const T square = acc[r][c] * acc[r][c];
      total += kSymmetric ? (c > diagonal ? 2 * square : c == diagonal ? square : T(0)) : square;
    }
  }
  return static_cast<double>(total);
}

// Rows i0..i0+7 (past the end: the last row again, results unused), columns c0..c0+n of Y.
template <typename T, bool kFullWidth, bool kReduce, bool kSymmetric>
TLTORCH_EXT_INLINE double product_block(const MatrixTerm<T>* terms, int count, int64_t i0,
                                        int64_t rows, int64_t c0, int width, bool accumulate,
                                        T* out, int64_t ldo) {
  const int n = kFullWidth ? kCols : width;
  T acc[kRows][kCols] = {};
  for (int p = 0; p < count; ++p) {
    const MatrixTerm<T>& term = terms[p];
    const T* m[kRows];
    for (int64_t r = 0; r < kRows; ++r) m[r] = term.m + std::min(i0 + r, rows - 1) * term.m_row;
    for (int64_t j = 0; j < term.inner; ++j) {
      const T* x = term.x + j * term.ldx + c0;
      T w[kRows];
      for (int64_t r = 0; r < kRows; ++r) w[r] = term.alpha * m[r][j * term.m_col];
#pragma omp simd
      for (int c = 0; c < n; ++c) {
        const T v = x[c];
        for (int64_t r = 0; r < kRows; ++r) acc[r][c] += w[r] * v;
      }
    }
  }
  const int64_t valid = std::min(kRows, rows - i0);
  if (out != nullptr) {
    for (int64_t r = 0; r < valid; ++r) {
      T* o = out + (i0 + r) * ldo + c0;
      for (int c = 0; c < n; ++c) o[c] = accumulate ? o[c] + acc[r][c] : acc[r][c];
    }
  }
  return kReduce ? block_squares<T, kSymmetric>(acc, i0, valid, c0, n) : 0.0;
}

template <typename T, bool kReduce, bool kSymmetric>
TLTORCH_EXT_INLINE double products_impl(const MatrixTerm<T>* terms, int count, int64_t rows,
                                        int64_t cols, bool accumulate, T* out, int64_t ldo) {
  double total = 0;
  for (int64_t i0 = 0; i0 < rows; i0 += kRows) {
    // Symmetric: the blocks ending left of the diagonal (c0 + kCols ≤ i0) are skipped.
    int64_t c0 = kSymmetric ? i0 / kCols * kCols : 0;
    for (; c0 + kCols <= cols; c0 += kCols) {
      total += product_block<T, true, kReduce, kSymmetric>(terms, count, i0, rows, c0, kCols,
                                                           accumulate, out, ldo);
    }
    if (c0 < cols) {
      total += product_block<T, false, kReduce, kSymmetric>(
          terms, count, i0, rows, c0, static_cast<int>(cols - c0), accumulate, out, ldo);
    }
  }
  return total;
}

// y[r][c] += coef · a_r · b_c for 4 × 4 rows (16 independent vector accumulators over k).
template <typename T>
TLTORCH_EXT_INLINE void dot_block(const T* const a[4], const T* const b[4], int64_t len, T coef,
                                  T (&y)[4][4]) {
  const T *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
  const T *b0 = b[0], *b1 = b[1], *b2 = b[2], *b3 = b[3];
  T s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
  T s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
#pragma omp simd reduction(+ : s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, \
                               s31, s32, s33)
  for (int64_t k = 0; k < len; ++k) {
    const T x0 = a0[k], x1 = a1[k], x2 = a2[k], x3 = a3[k];
    const T v0 = b0[k], v1 = b1[k], v2 = b2[k], v3 = b3[k];
    s00 += x0 * v0; s01 += x0 * v1; s02 += x0 * v2; s03 += x0 * v3;
    s10 += x1 * v0; s11 += x1 * v1; s12 += x1 * v2; s13 += x1 * v3;
    s20 += x2 * v0; s21 += x2 * v1; s22 += x2 * v2; s23 += x2 * v3;
    s30 += x3 * v0; s31 += x3 * v1; s32 += x3 * v2; s33 += x3 * v3;
  }
  const T s[4][4] = {{s00, s01, s02, s03}, {s10, s11, s12, s13}, {s20, s21, s22, s23},
                     {s30, s31, s32, s33}};
  for (int r = 0; r < 4; ++r) {
    for (int c = 0; c < 4; ++c) y[r][c] += coef * s[r][c];
  }
}

template <typename T>
TLTORCH_EXT_INLINE double row_dots_impl(const RowProduct<T>* terms, int count, int64_t rows,
                                        int64_t cols, Reduce reduce, T* out, int64_t ldo) {
  const bool symmetric = reduce == Reduce::kSymmetricSquares;
  double total = 0;
  for (int64_t i0 = 0; i0 < rows; i0 += 4) {
    // Blocks start on multiples of 4 both ways, so j0 ≥ i0 is the upper triangle.
    for (int64_t j0 = symmetric ? i0 : 0; j0 < cols; j0 += 4) {
      T y[4][4] = {};
      for (int p = 0; p < count; ++p) {
        const T* a[4];
        const T* b[4];
        for (int64_t r = 0; r < 4; ++r) {  // rows past the end repeat the last one (unused)
          a[r] = terms[p].a + std::min(i0 + r, rows - 1) * terms[p].lda;
          b[r] = terms[p].b + std::min(j0 + r, cols - 1) * terms[p].ldb;
        }
        dot_block(a, b, terms[p].len, terms[p].coef, y);
      }
      const int64_t ni = std::min<int64_t>(4, rows - i0), nj = std::min<int64_t>(4, cols - j0);
      T squares = 0;
      for (int64_t i = 0; i < ni; ++i) {
        for (int64_t j = 0; j < nj; ++j) {
          squares += y[i][j] * y[i][j];
          if (out != nullptr) out[(i0 + i) * ldo + j0 + j] = y[i][j];
        }
      }
      total += (symmetric && j0 != i0 ? 2.0 : 1.0) * static_cast<double>(squares);
    }
  }
  return reduce == Reduce::kNone ? 0.0 : total;
}

template <typename T>
TLTORCH_EXT_INLINE double products_dispatch(const MatrixTerm<T>* terms, int count, int64_t rows,
                                            int64_t cols, Reduce reduce, bool accumulate, T* out,
                                            int64_t ldo) {
  switch (reduce) {
    case Reduce::kSymmetricSquares:
      return products_impl<T, true, true>(terms, count, rows, cols, false, nullptr, 0);
    case Reduce::kSquares:
      return products_impl<T, true, false>(terms, count, rows, cols, accumulate, out, ldo);
    default:
      return products_impl<T, false, false>(terms, count, rows, cols, accumulate, out, ldo);
  }
}

}  // namespace

TLTORCH_EXT_ISA_CLONES double products(const MatrixTerm<float>* terms, int count, int64_t rows,
                                       int64_t cols, Reduce reduce, bool accumulate, float* out,
                                       int64_t ldo) {
  return products_dispatch(terms, count, rows, cols, reduce, accumulate, out, ldo);
}

TLTORCH_EXT_ISA_CLONES double products(const MatrixTerm<double>* terms, int count, int64_t rows,
                                       int64_t cols, Reduce reduce, bool accumulate, double* out,
                                       int64_t ldo) {
  return products_dispatch(terms, count, rows, cols, reduce, accumulate, out, ldo);
}

TLTORCH_EXT_ISA_CLONES double row_dots(const RowProduct<float>* terms, int count, int64_t rows,
                                       int64_t cols, Reduce reduce, float* out, int64_t ldo) {
  return row_dots_impl(terms, count, rows, cols, reduce, out, ldo);
}

TLTORCH_EXT_ISA_CLONES double row_dots(const RowProduct<double>* terms, int count, int64_t rows,
                                       int64_t cols, Reduce reduce, double* out, int64_t ldo) {
  return row_dots_impl(terms, count, rows, cols, reduce, out, ldo);
}

}  // namespace tltorch_ext::tiles
