// Batch Spectral Shrinkage on CUDA (docs/api_bss.md), torch-free.
//
// Forward: gemm_kernel forms each Gram G = A Aᵀ in float64 (upper 32×32 tiles, mirrored); then
// jacobi_kernel, one block per matrix, finds its k smallest eigenpairs by cyclic Jacobi in the
// parallel "circle" ordering, the same algorithm as tltorch_ext/kernels/bss.py:
// - m = size rounded up to even (an odd size gets one zero padding index, which no rotation
//   touches since its coupling is 0). Round r pairs index m − 1 with r and i with
//   (2r − i) mod (m − 1); the m/2 pairs of a round are disjoint, so one round applies its m/2
//   rotations G ← Rᵀ G R at once, and a sweep's m − 1 rounds meet every pair once.
// - G is kept as its packed upper triangle (float64, m(m+1)/2 values) in shared memory when that
//   fits the device's opt-in limit (m ≤ 236 on H100, 200 on A100), else in a global workspace
//   (L2-resident); either way one thread block owns it.
// - A round: thread q computes the tangent of pair q from its 2×2 block and logs it; then each
//   thread takes pairs of pairs (qa ≤ qb) and rotates their 2×2 blocks of G in place.
// - Sweeps stop when max_{i≠j} |G_ij| ≤ m·eps·max_i G_ii, or after kMaxSweeps; a non-finite G
//   skips them and gives NaN (no hang).
// - The k smallest diagonal entries, clamped at 0, sum to the penalty; their eigenvectors come
//   from replaying the logged rotations last-first on the unit vectors e_i (k·m work per round
//   instead of accumulating all m² entries of the eigenvector matrix every round).
// Backward: W = U_kᵀ A then grad = scale · U_k W, two passes of the same tiled GEMM.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cfloat>
#include <climits>

#include "bss.cuh"

namespace tltorch_ext {
namespace bss {
namespace {

constexpr int kTile = 32;
constexpr int kGemmThreads = 256;  // 16 × 16 threads, 2 × 2 outputs each
constexpr int kJacobiThreads = 512;
constexpr int kWarps = kJacobiThreads / 32;
constexpr int64_t kMaxGrid = int64_t(1) << 30;

// ---- conversions ------------------------------------------------------------------------------
template <typename Acc>
__device__ __forceinline__ Acc widen(float v) { return static_cast<Acc>(v); }
template <typename Acc>
__device__ __forceinline__ Acc widen(double v) { return static_cast<Acc>(v); }
template <typename Acc>
__device__ __forceinline__ Acc widen(__half v) { return static_cast<Acc>(__half2float(v)); }
template <typename Acc>
__device__ __forceinline__ Acc widen(__nv_bfloat16 v) {
  return static_cast<Acc>(__bfloat162float(v));
}

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(float* p, double v) { *p = static_cast<float>(v); }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__half* p, double v) { *p = __double2half(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, double v) { *p = __double2bfloat16(v); }

__device__ void store_as(void* base, DType dtype, int64_t index, double v) {
  switch (dtype) {
    case DType::kFloat: store(static_cast<float*>(base) + index, v); break;
    case DType::kDouble: store(static_cast<double*>(base) + index, v); break;
    case DType::kHalf: store(static_cast<__half*>(base) + index, v); break;
    case DType::kBFloat16: store(static_cast<__nv_bfloat16*>(base) + index, v); break;
  }
}

// ---- tiled batched GEMM: C[n] = scale[n] · X[n] Y[n] ------------------------------------------
template <typename TX, typename TY, typename TC>
struct Gemm {
  const TX* x;
  Strided xs;
  const TY* y;
  Strided ys;
  TC* c;
  Strided cs;
  int64_t batch, rows, cols, inner;
  const void* scale;  // per matrix, in the accumulation dtype; null: 1
  bool symmetric;     // X Y symmetric (rows == cols): upper tiles only, each written twice
};

// Tile (r0.., c0..) of a strided matrix into shared memory, widened; consecutive threads read
// consecutive addresses along whichever dimension has unit stride.
template <typename Acc, typename T>
__device__ void load_tile(const T* matrix, Strided s, int64_t r0, int64_t c0, int64_t rows,
                          int64_t cols, Acc (*tile)[kTile + 1]) {
  const bool along_cols = s.col == 1;
  for (int e = threadIdx.x; e < kTile * kTile; e += blockDim.x) {
    const int i = along_cols ? e / kTile : e % kTile;
    const int j = along_cols ? e % kTile : e / kTile;
    const int64_t r = r0 + i, c = c0 + j;
    tile[i][j] = (r < rows && c < cols) ? widen<Acc>(matrix[r * s.row + c * s.col]) : Acc(0);
  }
}

// tile[i][j] is C(r0 + i, c0 + j); transposed writes it to C(c0 + j, r0 + i) instead. Threads
// walk the destination along its unit-stride dimension.
template <typename Acc, typename T>
__device__ void store_tile(T* matrix, Strided s, int64_t r0, int64_t c0, int64_t rows,
                           int64_t cols, Acc (*tile)[kTile + 1], bool transposed) {
  const int64_t dest_r0 = transposed ? c0 : r0, dest_c0 = transposed ? r0 : c0;
  const bool along_cols = s.col == 1;
  for (int e = threadIdx.x; e < kTile * kTile; e += blockDim.x) {
    const int u = along_cols ? e / kTile : e % kTile;  // destination row offset
    const int v = along_cols ? e % kTile : e / kTile;  // destination column offset
    const int64_t r = dest_r0 + u, c = dest_c0 + v;
    if (r < rows && c < cols)
      store(matrix + r * s.row + c * s.col, transposed ? tile[v][u] : tile[u][v]);
  }
}

// Upper-triangle tile index e (column by column) → (tile_r ≤ tile_c).
__device__ __forceinline__ void upper_tile(int64_t e, int64_t* tile_r, int64_t* tile_c) {
  int64_t c = static_cast<int64_t>((sqrt(8.0 * static_cast<double>(e) + 1.0) - 1.0) / 2.0);
  while (c * (c + 1) / 2 > e) --c;
  while ((c + 1) * (c + 2) / 2 <= e) ++c;
  *tile_c = c;
  *tile_r = e - c * (c + 1) / 2;
}

template <typename Acc, typename TX, typename TY, typename TC>
__global__ void __launch_bounds__(kGemmThreads)
    gemm_kernel(Gemm<TX, TY, TC> p, int64_t tiles_c, int64_t tiles_per_matrix) {
  __shared__ Acc x_tile[kTile][kTile + 1];
  __shared__ Acc y_tile[kTile][kTile + 1];
  __shared__ Acc c_tile[kTile][kTile + 1];
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const int64_t total = p.batch * tiles_per_matrix;
  for (int64_t block = blockIdx.x; block < total; block += gridDim.x) {
    const int64_t n = block / tiles_per_matrix, tile = block % tiles_per_matrix;
    int64_t tile_r, tile_c;
    if (p.symmetric) {
      upper_tile(tile, &tile_r, &tile_c);
    } else {
      tile_r = tile / tiles_c;
      tile_c = tile % tiles_c;
    }
    const int64_t r0 = tile_r * kTile, c0 = tile_c * kTile;
    const TX* x = p.x + n * p.xs.batch;
    const TY* y = p.y + n * p.ys.batch;
    Acc acc[2][2] = {{0, 0}, {0, 0}};
    for (int64_t k0 = 0; k0 < p.inner; k0 += kTile) {
      load_tile(x, p.xs, r0, k0, p.rows, p.inner, x_tile);
      load_tile(y, p.ys, k0, c0, p.inner, p.cols, y_tile);
      __syncthreads();
#pragma unroll 8
      for (int kk = 0; kk < kTile; ++kk) {
        const Acc a0 = x_tile[2 * ty][kk], a1 = x_tile[2 * ty + 1][kk];
        const Acc b0 = y_tile[kk][2 * tx], b1 = y_tile[kk][2 * tx + 1];
        acc[0][0] = fma(a0, b0, acc[0][0]);
        acc[0][1] = fma(a0, b1, acc[0][1]);
        acc[1][0] = fma(a1, b0, acc[1][0]);
        acc[1][1] = fma(a1, b1, acc[1][1]);
      }
      __syncthreads();
    }
    const Acc scale = p.scale ? static_cast<const Acc*>(p.scale)[n] : Acc(1);
    for (int a = 0; a < 2; ++a)
      for (int b = 0; b < 2; ++b) c_tile[2 * ty + a][2 * tx + b] = scale * acc[a][b];
    __syncthreads();
    TC* c = p.c + n * p.cs.batch;
    store_tile(c, p.cs, r0, c0, p.rows, p.cols, c_tile, false);
    if (p.symmetric && tile_r != tile_c) store_tile(c, p.cs, r0, c0, p.rows, p.cols, c_tile, true);
    __syncthreads();  // c_tile is rewritten by the next tile
  }
}

template <typename Acc, typename TX, typename TY, typename TC>
cudaError_t run_gemm(const Gemm<TX, TY, TC>& p, cudaStream_t stream) {
  const int64_t tiles_r = (p.rows + kTile - 1) / kTile, tiles_c = (p.cols + kTile - 1) / kTile;
  const int64_t per_matrix = p.symmetric ? tiles_r * (tiles_r + 1) / 2 : tiles_r * tiles_c;
  const int64_t total = p.batch * per_matrix;
  if (total == 0) return cudaSuccess;
  const unsigned grid = static_cast<unsigned>(std::min(total, kMaxGrid));
  gemm_kernel<Acc><<<grid, kGemmThreads, 0, stream>>>(p, tiles_c, per_matrix);
  return cudaGetLastError();
}

template <typename T>
cudaError_t gram_typed(const void* feature, Strided a, int64_t batch, int64_t m, int64_t length,
                       double* gram, cudaStream_t stream) {
  const T* f = static_cast<const T*>(feature);
  // Y = Aᵀ: the same memory with the strides swapped.
  Gemm<T, T, double> p{f, a, f, {a.batch, a.col, a.row}, gram, {m * m, m, 1}, batch, m, m, length,
                       nullptr, true};
  return run_gemm<double>(p, stream);
}

template <typename T, typename Acc>
cudaError_t backward_typed(const void* feature, Strided a, int64_t batch, int64_t m,
                           int64_t length, const void* vectors, int64_t k, const void* scale,
                           void* workspace, void* grad, cudaStream_t stream) {
  const T* f = static_cast<const T*>(feature);
  const Acc* u = static_cast<const Acc*>(vectors);
  Acc* w = static_cast<Acc*>(workspace);
  // W = U_kᵀ A (k × L): X = U_kᵀ is U_k (m × k, row-major) with the strides swapped.
  Gemm<Acc, T, Acc> project{u, {m * k, 1, k}, f, a, w, {k * length, length, 1}, batch, k, length, m,
                            nullptr, false};
  cudaError_t status = run_gemm<Acc>(project, stream);
  if (status != cudaSuccess) return status;
  Gemm<Acc, Acc, T> expand{u, {m * k, k, 1}, w, {k * length, length, 1}, static_cast<T*>(grad), a,
                           batch, m, length, k, scale, false};
  return run_gemm<Acc>(expand, stream);
}

// ---- Jacobi ---------------------------------------------------------------------------------
__device__ __forceinline__ int64_t packed_index(int i, int j) {
  return i <= j ? int64_t(j) * (j + 1) / 2 + i : int64_t(i) * (i + 1) / 2 + j;
}

// The pair in slot q of round r: {r, m − 1} for q = 0, {r − q, r + q} mod (m − 1) otherwise.
__device__ __forceinline__ void pair_in_slot(int q, int r, int m, int* lo, int* hi) {
  const int a = q == 0 ? r : (r - q + m - 1) % (m - 1);
  const int b = q == 0 ? m - 1 : (r + q) % (m - 1);
  *lo = min(a, b);
  *hi = max(a, b);
}

// tan of the rotation that zeroes g in [[a, g], [g, b]] (the root of modulus ≤ 1).
__device__ __forceinline__ double tangent(double a, double b, double g) {
  if (g == 0.0) return 0.0;
  const double theta = (b - a) / (2.0 * g);
  if (fabs(theta) > 1e150) return 0.5 / theta;  // θ² would overflow
  return (theta >= 0.0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0));
}

// Maximum of v over the block (all threads get it); scratch holds kWarps doubles.
__device__ double block_max(double v, double* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1)
    v = fmax(v, __shfl_xor_sync(0xffffffffu, v, offset));
  __syncthreads();  // scratch may still be read by a previous call
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  v = threadIdx.x % 32 < kWarps ? scratch[threadIdx.x % 32] : 0.0;
  for (int offset = 16; offset > 0; offset >>= 1)
    v = fmax(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// (max off-diagonal |G_ij|, max diagonal |G_ii|) of the packed triangle.
__device__ void scan_packed(const double* g, int m, double* scratch, double* off, double* diag) {
  double local_off = 0.0, local_diag = 0.0;
  for (int j = threadIdx.x / 32; j < m; j += kWarps) {
    for (int i = threadIdx.x % 32; i <= j; i += 32) {
      const double v = fabs(g[packed_index(i, j)]);
      if (i == j) local_diag = fmax(local_diag, v);
      else local_off = fmax(local_off, v);
    }
  }
  *off = block_max(local_off, scratch);
  *diag = block_max(local_diag, scratch);
}

int64_t padded_size(int64_t size) { return size + size % 2; }

size_t jacobi_tail_bytes(int64_t m) {
  // Doubles: cos, sin, tan per pair, the diagonal, reduction scratch; ints: lo, hi per pair, the
  // selected indices.
  return sizeof(double) * (3 * (m / 2) + m + kWarps) + sizeof(int) * (2 * (m / 2) + m);
}

__global__ void __launch_bounds__(kJacobiThreads)
    jacobi_kernel(const double* gram, int64_t batch, int size, int k, double* log,
                  double* packed_global, void* penalty, DType penalty_dtype, void* vectors,
                  DType vectors_dtype) {
  extern __shared__ __align__(16) unsigned char shared_raw[];
  const int m = size + size % 2, half = m / 2;
  const int64_t packed_count = int64_t(m) * (m + 1) / 2;
  const int64_t log_count = int64_t(kMaxSweeps) * (m - 1) * half;
  double* shared = reinterpret_cast<double*>(shared_raw);
  double* cos_q = shared + (packed_global ? 0 : packed_count);
  double* sin_q = cos_q + half;
  double* tan_q = sin_q + half;
  double* diag = tan_q + half;
  double* scratch = diag + m;
  int* lo_q = reinterpret_cast<int*>(scratch + kWarps);
  int* hi_q = lo_q + half;
  int* selected = hi_q + half;
  const double tol = m * DBL_EPSILON;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;

  for (int64_t n = blockIdx.x; n < batch; n += gridDim.x) {
    double* g = packed_global ? packed_global + n * packed_count : shared;
    double* rotations = log + n * log_count;
    const double* source = gram + n * size * size;

    int bad = 0;
    for (int j = warp; j < m; j += kWarps) {
      for (int i = lane; i <= j; i += 32) {
        const double v = (i < size && j < size) ? source[int64_t(j) * size + i] : 0.0;
        bad |= !isfinite(v);
        g[packed_index(i, j)] = v;
      }
    }
    bad = __syncthreads_or(bad);
    double off, diag_max;
    scan_packed(g, m, scratch, &off, &diag_max);

    int sweeps = 0;
    while (!bad && sweeps < kMaxSweeps && off > tol * diag_max) {
      for (int r = 0; r < m - 1; ++r) {
        for (int q = threadIdx.x; q < half; q += blockDim.x) {
          int lo, hi;
          pair_in_slot(q, r, m, &lo, &hi);
          const double t = tangent(g[packed_index(lo, lo)], g[packed_index(hi, hi)],
                                   g[packed_index(lo, hi)]);
          const double c = 1.0 / sqrt(1.0 + t * t);
          cos_q[q] = c;
          sin_q[q] = t * c;
          tan_q[q] = t;
          lo_q[q] = lo;
          hi_q[q] = hi;
          rotations[(int64_t(sweeps) * (m - 1) + r) * half + q] = t;
        }
        __syncthreads();
        // G ← Rᵀ G R: R has c on the diagonal, R[lo, hi] = s, R[hi, lo] = −s, per pair.
        for (int qb = warp; qb < half; qb += kWarps) {
          for (int qa = lane; qa <= qb; qa += 32) {
            const int a0 = lo_q[qa], a1 = hi_q[qa];
            if (qa == qb) {  // the rotated pair: exactly diag(a − t g, b + t g)
              const double t = tan_q[qa], off_ab = g[packed_index(a0, a1)];
              g[packed_index(a0, a0)] -= t * off_ab;
              g[packed_index(a1, a1)] += t * off_ab;
              g[packed_index(a0, a1)] = 0.0;
              continue;
            }
            const int b0 = lo_q[qb], b1 = hi_q[qb];
            const double ca = cos_q[qa], sa = sin_q[qa], cb = cos_q[qb], sb = sin_q[qb];
            const int64_t i00 = packed_index(a0, b0), i01 = packed_index(a0, b1);
            const int64_t i10 = packed_index(a1, b0), i11 = packed_index(a1, b1);
            const double x00 = g[i00], x01 = g[i01], x10 = g[i10], x11 = g[i11];
            const double y00 = ca * x00 - sa * x10, y01 = ca * x01 - sa * x11;
            const double y10 = sa * x00 + ca * x10, y11 = sa * x01 + ca * x11;
            g[i00] = cb * y00 - sb * y01;
            g[i01] = sb * y00 + cb * y01;
            g[i10] = cb * y10 - sb * y11;
            g[i11] = sb * y10 + cb * y11;
          }
        }
        __syncthreads();
      }
      ++sweeps;
      scan_packed(g, m, scratch, &off, &diag_max);
    }

    if (bad) {
      const double nan = __longlong_as_double(0x7ff8000000000000LL);
      if (threadIdx.x == 0) store_as(penalty, penalty_dtype, n, nan);
      for (int e = threadIdx.x; e < size * k; e += blockDim.x)
        store_as(vectors, vectors_dtype, n * size * k + e, nan);
      __syncthreads();
      continue;
    }

    // Rank the eigenvalues (ties by index) and pick the k smallest, smallest first.
    for (int i = threadIdx.x; i < m; i += blockDim.x) diag[i] = g[packed_index(i, i)];
    __syncthreads();
    for (int i = threadIdx.x; i < size; i += blockDim.x) {
      int rank = 0;
      for (int j = 0; j < size; ++j) rank += diag[j] < diag[i] || (diag[j] == diag[i] && j < i);
      if (rank < k) selected[rank] = i;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      double sum = 0.0;
      for (int c = 0; c < k; ++c) sum += fmax(diag[selected[c]], 0.0);
      store_as(penalty, penalty_dtype, n, sum);
    }

    // Eigenvector of entry i = R_1 R_2 ⋯ R_T e_i: replay the rotations last first on k unit
    // vectors, held (m × width, row-major) where G was, `width` columns at a time.
    const int chunk = static_cast<int>(min(int64_t(k), packed_count / m));
    const int64_t rounds = int64_t(sweeps) * (m - 1);
    for (int c0 = 0; c0 < k; c0 += chunk) {
      const int width = min(chunk, k - c0);
      double* x = g;
      __syncthreads();  // G (or the previous chunk) is no longer read
      for (int e = threadIdx.x; e < m * width; e += blockDim.x)
        x[e] = (e / width == selected[c0 + e % width]) ? 1.0 : 0.0;
      __syncthreads();
      for (int64_t step = rounds - 1; step >= 0; --step) {
        const int r = static_cast<int>(step % (m - 1));
        for (int e = threadIdx.x; e < half * width; e += blockDim.x) {
          const int q = e / width, c = e % width;
          int lo, hi;
          pair_in_slot(q, r, m, &lo, &hi);
          const double t = rotations[step * half + q];
          const double cs = 1.0 / sqrt(1.0 + t * t), sn = t * cs;
          const double x_lo = x[lo * width + c], x_hi = x[hi * width + c];
          x[lo * width + c] = cs * x_lo + sn * x_hi;
          x[hi * width + c] = cs * x_hi - sn * x_lo;
        }
        __syncthreads();
      }
      for (int e = threadIdx.x; e < size * width; e += blockDim.x)
        store_as(vectors, vectors_dtype, (n * size + e / width) * k + c0 + e % width, x[e]);
    }
    __syncthreads();  // shared memory is reused by the next matrix
  }
}

}  // namespace

cudaError_t launch_gram(const void* feature, DType dtype, Strided a, int64_t batch, int64_t m,
                        int64_t length, double* gram, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat: return gram_typed<float>(feature, a, batch, m, length, gram, stream);
    case DType::kDouble: return gram_typed<double>(feature, a, batch, m, length, gram, stream);
    case DType::kHalf: return gram_typed<__half>(feature, a, batch, m, length, gram, stream);
    case DType::kBFloat16:
      return gram_typed<__nv_bfloat16>(feature, a, batch, m, length, gram, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_backward(const void* feature, DType dtype, Strided a, int64_t batch, int64_t m,
                            int64_t length, const void* vectors, int64_t k, const void* scale,
                            void* workspace, void* grad, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat:
      return backward_typed<float, float>(feature, a, batch, m, length, vectors, k, scale,
                                          workspace, grad, stream);
    case DType::kDouble:
      return backward_typed<double, double>(feature, a, batch, m, length, vectors, k, scale,
                                            workspace, grad, stream);
    case DType::kHalf:
      return backward_typed<__half, float>(feature, a, batch, m, length, vectors, k, scale,
                                           workspace, grad, stream);
    case DType::kBFloat16:
      return backward_typed<__nv_bfloat16, float>(feature, a, batch, m, length, vectors, k, scale,
                                                  workspace, grad, stream);
  }
  return cudaErrorInvalidValue;
}

int64_t jacobi_log_elements(int64_t size) {
  const int64_t m = padded_size(size);
  return int64_t(kMaxSweeps) * (m - 1) * (m / 2);
}

int64_t jacobi_packed_elements(int64_t size) {
  const int64_t m = padded_size(size);
  return m * (m + 1) / 2;
}

cudaError_t jacobi_packs_in_shared(int64_t size, bool* in_shared) {
  int device = 0, limit = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status != cudaSuccess) return status;
  status = cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (status != cudaSuccess) return status;
  const int64_t m = padded_size(size);
  *in_shared = sizeof(double) * jacobi_packed_elements(size) + jacobi_tail_bytes(m) <=
               static_cast<size_t>(limit);
  return cudaSuccess;
}

cudaError_t launch_jacobi(const double* gram, int64_t batch, int64_t size, int64_t k, double* log,
                          double* packed, void* penalty, DType penalty_dtype, void* vectors,
                          DType vectors_dtype, cudaStream_t stream) {
  if (size < 1 || size > kMaxJacobi || k < 1 || k > size) return cudaErrorInvalidValue;
  if (vectors_dtype != DType::kFloat && vectors_dtype != DType::kDouble)
    return cudaErrorInvalidValue;
  if (batch == 0) return cudaSuccess;
  const int64_t m = padded_size(size);
  const size_t bytes =
      jacobi_tail_bytes(m) + (packed ? 0 : sizeof(double) * jacobi_packed_elements(size));
  cudaError_t status = cudaFuncSetAttribute(
      jacobi_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (status != cudaSuccess) return status;
  const unsigned grid = static_cast<unsigned>(std::min(batch, kMaxGrid));
  jacobi_kernel<<<grid, kJacobiThreads, bytes, stream>>>(gram, batch, static_cast<int>(size),
                                                          static_cast<int>(k), log, packed,
                                                          penalty, penalty_dtype, vectors,
                                                          vectors_dtype);
  return cudaGetLastError();
}

}  // namespace bss
}  // namespace tltorch_ext
