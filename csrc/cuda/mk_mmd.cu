// Multi-kernel MMD on CUDA (docs/api_mmd.md); see mk_mmd.cuh.
//
// Quadratic estimates: a block of 16 × 16 threads owns a 16 × 16 tile of pairs (i, j), one pair
// per thread. Per layer the tile's dot products come from 16-column chunks of the two row blocks
// staged in shared memory (the Gram trick on centred rows), then every kernel of the layer; the
// product over layers, the weight and a block reduction give one double per tile. Backward: a
// block per (row block, layer) walks every column tile, recomputes the slopes A, and adds A·zc_J
// into its own rows of the output. Linear: one thread per pair index (forward) or row (backward),
// direct distances.
#include "mk_mmd.cuh"

namespace tltorch_ext::cuda {
namespace {

constexpr int kTile = 16;
constexpr int kThreads = 256;

template <typename acc_t>
__device__ __forceinline__ acc_t clamp_distance(acc_t d) {
  return d < acc_t(0) ? acc_t(0) : d;  // NaN kept
}

// (Σ_k e^{−γ_k d}, Σ_k γ_k e^{−γ_k d}) over kernels first..last.
template <typename acc_t>
__device__ __forceinline__ acc_t kernel_sums(const double* gammas, int first, int last, acc_t d,
                                             acc_t* slope) {
  acc_t sum = 0, weighted = 0;
  for (int k = first; k < last; ++k) {
    const acc_t gamma = static_cast<acc_t>(gammas[k]);
    const acc_t e = exp(-gamma * d);
    sum += e;
    weighted += gamma * e;
  }
  *slope = weighted;
  return sum;
}

// d_ij of one layer for this thread's pair (i0 + ty, j0 + tx); every thread of the block calls.
template <typename acc_t>
__device__ acc_t tile_distance(const MmdProblem& p, int layer, int64_t i0, int64_t j0,
                               acc_t (*a)[kTile + 1], acc_t (*b)[kTile + 1]) {
  const acc_t* zc = static_cast<const acc_t*>(p.zc);
  const acc_t* q = static_cast<const acc_t*>(p.q);
  const int ty = threadIdx.y, tx = threadIdx.x;
  const int col0 = p.column_offsets[layer], dim = p.column_offsets[layer + 1] - col0;
  acc_t dot = 0;
  for (int k0 = 0; k0 < dim; k0 += kTile) {
    const bool col_ok = k0 + tx < dim;
    a[ty][tx] = (i0 + ty < p.n && col_ok) ? zc[(i0 + ty) * p.stride + col0 + k0 + tx] : acc_t(0);
    b[ty][tx] = (j0 + ty < p.n && col_ok) ? zc[(j0 + ty) * p.stride + col0 + k0 + tx] : acc_t(0);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kTile; ++k) dot += a[ty][k] * b[tx][k];
    __syncthreads();
  }
  const int64_t i = i0 + ty, j = j0 + tx;
  if (i >= p.n || j >= p.n) return acc_t(0);
  return clamp_distance(q[layer * p.n + i] + q[layer * p.n + j] - 2 * dot);
}

__device__ __forceinline__ double pair_weight(const MmdProblem& p, int64_t i, int64_t j) {
  return (i < p.batch) == (j < p.batch) ? p.same : p.cross;
}

// Σ over the block's threads of value, written by thread 0 to *out.
__device__ void block_sum(double value, double* out) {
  __shared__ double sums[kThreads];
  const int t = threadIdx.y * blockDim.x + threadIdx.x;
  sums[t] = value;
  __syncthreads();
  for (int half = blockDim.x * blockDim.y / 2; half > 0; half /= 2) {
    if (t < half) sums[t] += sums[t + half];
    __syncthreads();
  }
  if (t == 0) *out = sums[0];
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    quadratic_forward(const MmdProblem p, int64_t tiles, double* partial) {
  __shared__ acc_t a[kTile][kTile + 1], b[kTile][kTile + 1];
  const int64_t tile_i = blockIdx.x / tiles, tile_j = blockIdx.x - tile_i * tiles;
  double value = 0;
  if (tile_i <= tile_j) {  // uniform over the block
    const int64_t i0 = tile_i * kTile, j0 = tile_j * kTile;
    acc_t k = 1, unused;
    for (int layer = 0; layer < p.layers; ++layer) {
      const acc_t d = tile_distance<acc_t>(p, layer, i0, j0, a, b);
      k *= kernel_sums<acc_t>(p.gammas, p.kernel_offsets[layer], p.kernel_offsets[layer + 1], d,
                              &unused);
    }
    const int64_t i = i0 + threadIdx.y, j = j0 + threadIdx.x;
    if (i < p.n && j < p.n && i != j) {
      value = pair_weight(p, i, j) * static_cast<double>(k) * (tile_i < tile_j ? 2.0 : 1.0);
    }
  }
  block_sum(value, partial + blockIdx.x);
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    quadratic_backward(const MmdProblem p, int64_t tiles, const acc_t* grad, acc_t* out) {
  __shared__ acc_t a[kTile][kTile + 1], b[kTile][kTile + 1], slopes[kTile][kTile + 1];
  const int64_t block = blockIdx.x / p.layers;
  const int target = static_cast<int>(blockIdx.x - block * p.layers);
  const int ty = threadIdx.y, tx = threadIdx.x;
  const int64_t i0 = block * kTile, i = i0 + ty;
  const acc_t* zc = static_cast<const acc_t*>(p.zc);
  const int t_col0 = p.column_offsets[target];
  const int t_dim = p.column_offsets[target + 1] - t_col0;
  acc_t row_sum = 0;
  for (int64_t tile_j = 0; tile_j < tiles; ++tile_j) {
    const int64_t j0 = tile_j * kTile, j = j0 + tx;
    acc_t slope = 1;  // ∂K/∂d^target = −T^target Π_{other layers} S
    for (int layer = 0; layer < p.layers; ++layer) {
      const acc_t d = tile_distance<acc_t>(p, layer, i0, j0, a, b);
      acc_t t;
      const acc_t s = kernel_sums<acc_t>(p.gammas, p.kernel_offsets[layer],
                                         p.kernel_offsets[layer + 1], d, &t);
      slope *= layer == target ? t : s;
    }
    const bool valid = i < p.n && j < p.n && i != j;
    slopes[ty][tx] = valid ? static_cast<acc_t>(-2 * pair_weight(p, i, j)) * slope : acc_t(0);
    __syncthreads();
    for (int c = 0; c < kTile; ++c) row_sum += slopes[ty][c];
    for (int c0 = 0; c0 < t_dim; c0 += kTile) {
      const int col = c0 + tx;
      if (i < p.n && col < t_dim) {
        acc_t acc = 0;
        for (int c = 0; c < kTile && j0 + c < p.n; ++c) {
          acc += slopes[ty][c] * zc[(j0 + c) * p.stride + t_col0 + col];
        }
        out[i * p.stride + t_col0 + col] += acc;  // only this thread touches this entry
      }
    }
    __syncthreads();
  }
  const acc_t scale = 2 * grad[0];
  for (int c0 = 0; c0 < t_dim; c0 += kTile) {
    const int col = c0 + tx;
    if (i < p.n && col < t_dim) {
      const int64_t at = i * p.stride + t_col0 + col;
      out[at] = scale * (row_sum * zc[at] - out[at]);
    }
  }
}

// K(a, b) from the direct distances, or with target ≥ 0 the slope T^target Π_{others} S.
template <typename acc_t>
__device__ acc_t pair_kernel(const MmdProblem& p, int64_t x, int64_t y, int target) {
  const acc_t* zc = static_cast<const acc_t*>(p.zc);
  acc_t value = 1;
  for (int layer = 0; layer < p.layers; ++layer) {
    const int col0 = p.column_offsets[layer], col1 = p.column_offsets[layer + 1];
    acc_t d = 0;
    for (int c = col0; c < col1; ++c) {
      const acc_t diff = zc[x * p.stride + c] - zc[y * p.stride + c];
      d += diff * diff;
    }
    acc_t t;
    const acc_t s = kernel_sums<acc_t>(p.gammas, p.kernel_offsets[layer],
                                       p.kernel_offsets[layer + 1], d, &t);
    value *= layer == target ? t : s;
  }
  return value;
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads) linear_forward(const MmdProblem p, double* partial) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  double value = 0;
  if (i < p.batch) {
    const int64_t next = (i + 1) % p.batch, b = p.batch;
    const double same = pair_kernel<acc_t>(p, i, next, -1) +
                        pair_kernel<acc_t>(p, i + b, next + b, -1);
    const double cross = pair_kernel<acc_t>(p, i, next + b, -1) +
                         pair_kernel<acc_t>(p, next, i + b, -1);
    value = p.same * same + p.cross * cross;
  }
  block_sum(value, partial + blockIdx.x);
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    linear_backward(const MmdProblem p, const acc_t* grad, acc_t* out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int target = blockIdx.y;
  if (row >= p.n) return;
  const int64_t b = p.batch, i = row % b, own = row - i, other = row < b ? b : 0;
  const int64_t next = (i + 1) % b, prev = (i + b - 1) % b;
  // Row r's partners: its domain's neighbours (weight same), the other domain's (cross).
  const int64_t partners[4] = {own + next, own + prev, other + next, other + prev};
  acc_t slopes[4], row_sum = 0;
  for (int s = 0; s < 4; ++s) {
    slopes[s] = static_cast<acc_t>(-(s < 2 ? p.same : p.cross)) *
                pair_kernel<acc_t>(p, row, partners[s], target);
    row_sum += slopes[s];
  }
  const acc_t* zc = static_cast<const acc_t*>(p.zc);
  const acc_t scale = 2 * grad[0];
  for (int c = p.column_offsets[target]; c < p.column_offsets[target + 1]; ++c) {
    acc_t g = row_sum * zc[row * p.stride + c];
    for (int s = 0; s < 4; ++s) g -= slopes[s] * zc[partners[s] * p.stride + c];
    out[row * p.stride + c] = scale * g;
  }
}

int64_t tiles_of(const MmdProblem& p) { return (p.n + kTile - 1) / kTile; }
int64_t linear_blocks(int64_t count) { return (count + kThreads - 1) / kThreads; }

template <typename acc_t>
cudaError_t forward_typed(const MmdProblem& p, double* partial, cudaStream_t stream) {
  if (p.linear) {
    linear_forward<acc_t><<<linear_blocks(p.batch), kThreads, 0, stream>>>(p, partial);
  } else {
    const int64_t tiles = tiles_of(p);
    quadratic_forward<acc_t><<<tiles * tiles, dim3(kTile, kTile), 0, stream>>>(p, tiles, partial);
  }
  return cudaGetLastError();
}

template <typename acc_t>
cudaError_t backward_typed(const MmdProblem& p, const void* grad, void* out,
                           cudaStream_t stream) {
  const acc_t* g = static_cast<const acc_t*>(grad);
  acc_t* o = static_cast<acc_t*>(out);
  if (p.linear) {
    const dim3 grid(static_cast<unsigned>(linear_blocks(p.n)), p.layers);
    linear_backward<acc_t><<<grid, kThreads, 0, stream>>>(p, g, o);
  } else {
    const int64_t tiles = tiles_of(p);
    quadratic_backward<acc_t><<<tiles * p.layers, dim3(kTile, kTile), 0, stream>>>(p, tiles, g,
                                                                                   o);
  }
  return cudaGetLastError();
}

}  // namespace

int64_t mk_mmd_forward_partials(const MmdProblem& p) {
  return p.linear ? linear_blocks(p.batch) : tiles_of(p) * tiles_of(p);
}

cudaError_t mk_mmd_forward(const MmdProblem& p, double* partial, cudaStream_t stream) {
  return p.double_acc ? forward_typed<double>(p, partial, stream)
                      : forward_typed<float>(p, partial, stream);
}

cudaError_t mk_mmd_backward(const MmdProblem& p, const void* grad, void* out,
                            cudaStream_t stream) {
  return p.double_acc ? backward_typed<double>(p, grad, out, stream)
                      : backward_typed<float>(p, grad, out, stream);
}

}  // namespace tltorch_ext::cuda
