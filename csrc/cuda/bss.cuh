// Batch Spectral Shrinkage CUDA kernels (docs/api_bss.md): torch-free launchers on plain pointers.
// The torch wrappers are in bss_binding.cpp; bss.cu describes the kernels.
//
// Each feature matrix F (b × d) of a batch is used through its Gram side A = F (b ≤ d) or
// A = Fᵀ (b > d), an m × L matrix (m = min(b, d)) given by strides into the feature tensor.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.cuh"

namespace tltorch_ext {
namespace bss {

using cuda::DType;

// Largest Gram the Jacobi kernel solves (the caller falls back to an eigensolver beyond), and its
// sweep cap (float64 Jacobi needs ≈ log2(m) + 3 sweeps: 11 at m = 256).
constexpr int64_t kMaxJacobi = 256;
constexpr int kMaxSweeps = 16;

// Element (i, l) of matrix n of A is at feature + n·batch + i·row + l·col (in elements).
struct Strided {
  int64_t batch, row, col;
};

// gram[n] = A[n] A[n]ᵀ (m × m, row-major, batch stride m·m) in float64: products of the inputs,
// widened to float64, are exact for float32/float16/bfloat16.
cudaError_t launch_gram(const void* feature, DType dtype, Strided a, int64_t batch, int64_t m,
                        int64_t length, double* gram, cudaStream_t stream);

// grad[n] = scale[n] · U_k U_kᵀ A[n], written with A's strides (so grad has F's layout), in
// feature's dtype. vectors (batch, m, k) row-major and scale (batch,) are float32 (float64 for
// float64 feature), as is the workspace of batch·k·length values holding W = U_kᵀ A. IEEE FMA
// products (no TF32), accumulation in that dtype.
cudaError_t launch_backward(const void* feature, DType dtype, Strided a, int64_t batch, int64_t m,
                            int64_t length, const void* vectors, int64_t k, const void* scale,
                            void* workspace, void* grad, cudaStream_t stream);

// Working memory of the Jacobi kernel per matrix of size m (≤ kMaxJacobi), in doubles: the
// rotation log (always) and the packed Gram (only when it does not fit in shared memory).
int64_t jacobi_log_elements(int64_t m);
int64_t jacobi_packed_elements(int64_t m);
// Whether the packed float64 triangle of an m×m Gram fits in the current device's shared memory
// (its opt-in limit per block), i.e. whether the Jacobi kernel needs no packed workspace.
cudaError_t jacobi_packs_in_shared(int64_t m, bool* in_shared);

// The k smallest eigenpairs of each float64 Gram gram[n] (m × m, row-major, batch stride m·m):
// penalty[n] = Σ of those eigenvalues clamped at 0 (in penalty_dtype), vectors[n] their
// eigenvectors (m × k, row-major, smallest first, in vectors_dtype: float32 or float64); NaN
// for a Gram with a non-finite entry. log: jacobi_log_elements(m) doubles per matrix; packed:
// jacobi_packed_elements(m) doubles per matrix, or null when jacobi_packs_in_shared(m). One
// block per matrix, no host synchronisation.
cudaError_t launch_jacobi(const double* gram, int64_t batch, int64_t m, int64_t k, double* log,
                          double* packed, void* penalty, DType penalty_dtype, void* vectors,
                          DType vectors_dtype, cudaStream_t stream);

}  // namespace bss
}  // namespace tltorch_ext
