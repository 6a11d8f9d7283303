// Batched products with fused normalization; see tile_products.cuh.
//
// One block of 256 threads per (64 × 64 output tile, sample). The K dimension advances in steps
// of 16: each thread loads 4 values of A and 4 of B into shared memory (converted to the
// accumulation type, normalized, A times coef), the mapping of threads to elements following
// whichever operand axis has unit stride so that global loads coalesce; then each thread updates
// its 4 × 4 outputs (rows ty + 16i, columns tx + 16j: conflict-free shared reads).
#include "tile_products.cuh"
#include "values.cuh"

namespace tltorch_ext::cuda {
namespace {

constexpr int kTile = 64;
constexpr int kStep = 16;
constexpr int kThreads = 256;
constexpr int kPerThread = kTile * kStep / kThreads;  // elements of each operand a thread loads
constexpr int64_t kMaxGridY = 65535;

// Element (i, j) of sample b of a view, normalized along its channel axis when it has one.
template <typename acc_t>
__device__ __forceinline__ acc_t view_value(const MatrixView& v, int64_t b, int64_t i, int64_t j,
                                            acc_t eps) {
  const int64_t offset = b * v.batch_stride + i * v.stride_i + j * v.stride_j;
  acc_t x = load_value<acc_t>(v.data, v.dtype, offset);
  if (v.norm_axis >= 0) {
    const acc_t norm = static_cast<const acc_t*>(v.norms)[b * v.norms_batch_stride +
                                                          (v.norm_axis == 0 ? i : j)];
    x *= acc_t(1) / (norm > eps ? norm : eps);
  }
  return x;
}

template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t value, acc_t* warp_sums) {
  value = warp_sum(value);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  acc_t total = 0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
  }
  return total;
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    products_kernel(const ProductsArgs args, int64_t batch_offset) {
  __shared__ acc_t a_tile[kStep][kTile + 1];
  __shared__ acc_t b_tile[kStep][kTile + 1];
  __shared__ acc_t warp_sums[kThreads / 32];
  const int64_t b = batch_offset + blockIdx.y;
  const int64_t tiles_n = (args.cols + kTile - 1) / kTile;
  const int64_t tile_m = blockIdx.x / tiles_n, tile_n = blockIdx.x % tiles_n;
  const int64_t m0 = tile_m * kTile, n0 = tile_n * kTile;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const acc_t eps = static_cast<acc_t>(args.eps);
  acc_t acc[4][4] = {};
  // Below the diagonal of a symmetric result nothing is computed (uniform across the block).
  if (!args.symmetric || tile_m <= tile_n) {
    for (int p = 0; p < args.count; ++p) {
      const Product& product = args.products[p];
      const acc_t coef = static_cast<acc_t>(product.coef);
      const bool a_inner_fast = product.a.stride_j == 1;
      const bool b_cols_fast = product.b.stride_j == 1;
      for (int64_t k0 = 0; k0 < product.inner; k0 += kStep) {
#pragma unroll
        for (int r = 0; r < kPerThread; ++r) {
          const int e = threadIdx.x + r * kThreads;
          const int ka = a_inner_fast ? e % kStep : e / kTile;
          const int ma = a_inner_fast ? e / kStep : e % kTile;
          const int64_t m = m0 + ma, k = k0 + ka;
          a_tile[ka][ma] = m < args.rows && k < product.inner
                               ? coef * view_value<acc_t>(product.a, b, m, k, eps)
                               : acc_t(0);
          const int kb = b_cols_fast ? e / kTile : e % kStep;
          const int nb = b_cols_fast ? e % kTile : e / kStep;
          const int64_t n = n0 + nb, kk = k0 + kb;
          b_tile[kb][nb] = n < args.cols && kk < product.inner
                               ? view_value<acc_t>(product.b, b, kk, n, eps)
                               : acc_t(0);
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < kStep; ++k) {
          acc_t a_reg[4], b_reg[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) a_reg[i] = a_tile[k][ty + 16 * i];
#pragma unroll
          for (int j = 0; j < 4; ++j) b_reg[j] = b_tile[k][tx + 16 * j];
#pragma unroll
          for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = fma(a_reg[i], b_reg[j], acc[i][j]);
          }
        }
        __syncthreads();
      }
    }
  }
  const acc_t scale = args.grad == nullptr ? acc_t(1) : *static_cast<const acc_t*>(args.grad);
  acc_t squares = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m < args.rows && n < args.cols) {
        squares += acc[i][j] * acc[i][j];
        if (args.out != nullptr) {
          store_value<acc_t>(args.out, args.out_dtype,
                             b * args.out_batch_stride + m * args.out_stride_i +
                                 n * args.out_stride_j,
                             acc[i][j] * scale);
        }
      }
    }
  }
  if (args.partial != nullptr) {
    const acc_t total = block_sum(squares, warp_sums);
    if (threadIdx.x == 0) {
      const acc_t weight = args.symmetric && tile_m < tile_n ? acc_t(2) : acc_t(1);
      static_cast<acc_t*>(args.partial)[b * gridDim.x + blockIdx.x] = weight * total;
    }
  }
}

template <typename acc_t>
__global__ void weighted_sum_kernel(const acc_t* p0, const acc_t* p1, const acc_t* p2,
                                    int64_t n0, int64_t n1, int64_t n2, double w0, double w1,
                                    double w2, double scale, void* out, DType out_dtype) {
  __shared__ acc_t warp_sums[kThreads / 32];
  const acc_t* parts[3] = {p0, p1, p2};
  const int64_t counts[3] = {n0, n1, n2};
  const double weights[3] = {w0, w1, w2};
  acc_t value = 0;
  for (int t = 0; t < 3; ++t) {
    acc_t sum = 0;
    for (int64_t i = threadIdx.x; i < counts[t]; i += kThreads) sum += parts[t][i];
    value += static_cast<acc_t>(weights[t]) * sum;
  }
  const acc_t total = block_sum(value, warp_sums);
  if (threadIdx.x == 0) store_value<acc_t>(out, out_dtype, 0, total * static_cast<acc_t>(scale));
}

}  // namespace

int64_t product_tiles(int64_t rows, int64_t cols) {
  return ((rows + kTile - 1) / kTile) * ((cols + kTile - 1) / kTile);
}

cudaError_t launch_products(const ProductsArgs& args, cudaStream_t stream) {
  if (args.count < 1 || args.count > 2 || args.rows <= 0 || args.cols <= 0 || args.batch <= 0) {
    return cudaErrorInvalidValue;
  }
  if (args.symmetric && (args.out != nullptr || args.rows != args.cols)) {
    return cudaErrorInvalidValue;
  }
  const int64_t tiles = product_tiles(args.rows, args.cols);
  if (tiles > INT32_MAX) return cudaErrorInvalidConfiguration;
  // gridDim.y is limited: walk the batch in chunks.
  for (int64_t first = 0; first < args.batch; first += kMaxGridY) {
    const dim3 grid(static_cast<unsigned>(tiles),
                    static_cast<unsigned>(args.batch - first < kMaxGridY ? args.batch - first
                                                                         : kMaxGridY));
    if (args.double_acc) {
      products_kernel<double><<<grid, kThreads, 0, stream>>>(args, first);
    } else {
      products_kernel<float><<<grid, kThreads, 0, stream>>>(args, first);
    }
    const cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess) return status;
  }
  return cudaSuccess;
}

cudaError_t launch_weighted_sum(const void* const* partials, const int64_t* counts,
                                const double* weights, int terms, double scale, bool double_acc,
                                void* out, DType out_dtype, cudaStream_t stream) {
  if (terms < 1 || terms > 3) return cudaErrorInvalidValue;
  const void* p[3] = {partials[0], partials[0], partials[0]};
  int64_t n[3] = {0, 0, 0};
  double w[3] = {0, 0, 0};
  for (int t = 0; t < terms; ++t) {
    p[t] = partials[t];
    n[t] = counts[t];
    w[t] = weights[t];
  }
  if (double_acc) {
    weighted_sum_kernel<double><<<1, kThreads, 0, stream>>>(
        static_cast<const double*>(p[0]), static_cast<const double*>(p[1]),
        static_cast<const double*>(p[2]), n[0], n[1], n[2], w[0], w[1], w[2], scale, out,
        out_dtype);
  } else {
    weighted_sum_kernel<float><<<1, kThreads, 0, stream>>>(
        static_cast<const float*>(p[0]), static_cast<const float*>(p[1]),
        static_cast<const float*>(p[2]), n[0], n[1], n[2], w[0], w[1], w[2], scale, out,
        out_dtype);
  }
  return cudaGetLastError();
}

}  // namespace tltorch_ext::cuda
