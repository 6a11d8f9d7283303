// Register-blocked products for the FSP and NST CPU kernels; see gram_tiles.h.
#include "gram_tiles.h"

#include <algorithm>

// One copy per instruction-set level, chosen once at load time (GCC function multiversioning);
// the inline templates below are compiled into each copy.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define TLTORCH_EXT_ISA_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TLTORCH_EXT_ISA_CLONES
#endif
#define TLTORCH_EXT_INLINE inline __attribute__((always_inline))

namespace tltorch_ext::tiles {
namespace {

constexpr int64_t kBlock = 4;  // 4 × 4 dot products, or 4 output rows, per register block
constexpr int kCols = 32;      // columns of the apply block

// y[r][c] += coef · a_r · b_c for the 4 × 4 rows given (16 independent vector accumulators).
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
  y[0][0] += coef * s00; y[0][1] += coef * s01; y[0][2] += coef * s02; y[0][3] += coef * s03;
  y[1][0] += coef * s10; y[1][1] += coef * s11; y[1][2] += coef * s12; y[1][3] += coef * s13;
  y[2][0] += coef * s20; y[2][1] += coef * s21; y[2][2] += coef * s22; y[2][3] += coef * s23;
  y[3][0] += coef * s30; y[3][1] += coef * s31; y[3][2] += coef * s32; y[3][3] += coef * s33;
}

// Rows past the end repeat the last row: the block stays full width, the extra results unused.
template <typename T>
TLTORCH_EXT_INLINE void block_rows(const T* base, int64_t ld, int64_t first, int64_t count,
                                   const T* (&rows)[4]) {
  for (int64_t r = 0; r < kBlock; ++r) rows[r] = base + std::min(first + r, count - 1) * ld;
}

template <typename T>
TLTORCH_EXT_INLINE double gram_tiles_impl(const RowProduct<T>* products, int count, int64_t rows,
                                          int64_t cols, bool symmetric, T* out, int64_t ldo) {
  double total = 0;
  for (int64_t i0 = 0; i0 < rows; i0 += kBlock) {
    // Blocks start on multiples of 4 in both directions, so j0 ≥ i0 is the upper triangle.
    for (int64_t j0 = symmetric ? i0 : 0; j0 < cols; j0 += kBlock) {
      T y[4][4] = {};
      for (int p = 0; p < count; ++p) {
        const RowProduct<T>& product = products[p];
        const T* a[4];
        const T* b[4];
        block_rows(product.a, product.lda, i0, rows, a);
        block_rows(product.b, product.ldb, j0, cols, b);
        dot_block(a, b, product.len, product.coef, y);
      }
      const int64_t ni = std::min(kBlock, rows - i0), nj = std::min(kBlock, cols - j0);
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
  return total;
}

// Output rows i0..i0+3 (clamped), columns c0..c0+width of out = Σ alpha M X.
template <typename T, bool kFullWidth>
TLTORCH_EXT_INLINE void apply_block(const MatrixTerm<T>* terms, int count, int64_t i0,
                                    int64_t rows, int64_t c0, int width, bool accumulate, T* out,
                                    int64_t ldo) {
  const int n = kFullWidth ? kCols : width;
  T acc[4][kCols] = {};
  for (int p = 0; p < count; ++p) {
    const MatrixTerm<T>& term = terms[p];
    const T* m[4];
    block_rows(term.m, term.m_row, i0, rows, m);
    for (int64_t j = 0; j < term.inner; ++j) {
      const T* x = term.x + j * term.ldx + c0;
      const int64_t mj = j * term.m_col;
      const T w0 = term.alpha * m[0][mj], w1 = term.alpha * m[1][mj];
      const T w2 = term.alpha * m[2][mj], w3 = term.alpha * m[3][mj];
#pragma omp simd
      for (int c = 0; c < n; ++c) {
        const T v = x[c];
        acc[0][c] += w0 * v;
        acc[1][c] += w1 * v;
        acc[2][c] += w2 * v;
        acc[3][c] += w3 * v;
      }
    }
  }
  const int64_t valid = std::min(kBlock, rows - i0);
  for (int64_t r = 0; r < valid; ++r) {
    T* o = out + (i0 + r) * ldo + c0;
    for (int c = 0; c < n; ++c) o[c] = accumulate ? o[c] + acc[r][c] : acc[r][c];
  }
}

template <typename T>
TLTORCH_EXT_INLINE void apply_rows_impl(const MatrixTerm<T>* terms, int count, int64_t rows,
                                        int64_t len, bool accumulate, T* out, int64_t ldo) {
  for (int64_t i0 = 0; i0 < rows; i0 += kBlock) {
    int64_t c0 = 0;
    for (; c0 + kCols <= len; c0 += kCols) {
      apply_block<T, true>(terms, count, i0, rows, c0, kCols, accumulate, out, ldo);
    }
    if (c0 < len) {
      apply_block<T, false>(terms, count, i0, rows, c0, static_cast<int>(len - c0), accumulate,
                            out, ldo);
    }
  }
}

}  // namespace

TLTORCH_EXT_ISA_CLONES double gram_tiles(const RowProduct<float>* products, int count,
                                         int64_t rows, int64_t cols, bool symmetric, float* out,
                                         int64_t ldo) {
  return gram_tiles_impl(products, count, rows, cols, symmetric, out, ldo);
}

TLTORCH_EXT_ISA_CLONES double gram_tiles(const RowProduct<double>* products, int count,
                                         int64_t rows, int64_t cols, bool symmetric, double* out,
                                         int64_t ldo) {
  return gram_tiles_impl(products, count, rows, cols, symmetric, out, ldo);
}

TLTORCH_EXT_ISA_CLONES void apply_rows(const MatrixTerm<float>* terms, int count, int64_t rows,
                                       int64_t len, bool accumulate, float* out, int64_t ldo) {
  apply_rows_impl(terms, count, rows, len, accumulate, out, ldo);
}

TLTORCH_EXT_ISA_CLONES void apply_rows(const MatrixTerm<double>* terms, int count, int64_t rows,
                                       int64_t len, bool accumulate, double* out, int64_t ldo) {
  apply_rows_impl(terms, count, rows, len, accumulate, out, ldo);
}

}  // namespace tltorch_ext::tiles
