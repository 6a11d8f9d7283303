// StochNorm CUDA kernels (docs/api_stochnorm.md); interface and conventions in stoch_norm.cuh.
//
// The phases: stats (a statistics pass, a per-channel combine), elemt (per-channel coefficients,
// a write pass), backward_reduce (a reduction pass for Σdy and Σdy·(x − μ), a per-channel
// combine), backward_elemt (per-channel coefficients from those sums and the count, a write
// pass). The fused forward and backward are composed of them (see their definitions). The
// reduction passes run on a grid of channel blocks × splits of the N·S values, so that a few
// channels still fill the GPU:
// - channels-first memory: one block per (channel, split), each thread walking 16-byte vectors of
//   one channel's rows;
// - channels-last memory: a block is (channel lanes × rows); each thread owns 16 bytes of
//   consecutive channels and walks the rows of its split.
// Each thread keeps Welford moments (count, mean, M2); threads merge them with Chan's formula
// through shared memory, and each block writes one partial per channel. The splits are then
// merged by a second, tiny kernel rather than with atomics: Welford moments do not simply add (a
// merge needs both counts and means), and a fixed merge order keeps the statistics bitwise
// reproducible from run to run. The partials are 3·splits·C values, negligible next to x.
// Accumulation is in acc_t (float, or double for double data). Division and sqrt are IEEE (the
// build does not use fast math).
#include "stoch_norm.cuh"

#include <algorithm>

namespace tltorch_ext::cuda {
namespace {

constexpr int kThreads = 256;
// Reduction blocks wanted per SM, and the fewest values a thread of a split should reduce.
constexpr int kBlocksPerSm = 8;
constexpr int kMinValuesPerThread = 8;
// Write pass: grid-stride blocks per SM at most.
constexpr int kWriteBlocksPerSm = 32;
constexpr int kMaxGridY = 65535;

template <typename scalar_t>
constexpr int kVec = 16 / static_cast<int>(sizeof(scalar_t));  // values per 16-byte access

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T>
__device__ __forceinline__ T smaller(T a, T b) {
  return a < b ? a : b;
}

// ---- conversions and 16-byte accesses ----------------------------------------------------------

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ double widen(double v) { return v; }
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ scalar_t narrow(acc_t v) {
  return static_cast<scalar_t>(v);  // float and double
}
template <>
__device__ __forceinline__ __half narrow<__half, float>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// VEC consecutive values at p (16-byte aligned when VEC > 1), widened to acc_t.
template <int VEC, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load(const scalar_t* p, acc_t (&out)[VEC]) {
  const Pack<scalar_t, VEC> pack = *reinterpret_cast<const Pack<scalar_t, VEC>*>(p);
#pragma unroll
  for (int j = 0; j < VEC; ++j) out[j] = widen(pack.v[j]);
}

// ---- per-thread states -------------------------------------------------------------------------

// Moments of a set of values: count, mean, M2 = Σ(v − mean)².
template <typename acc_t>
struct Moments {
  acc_t count, mean, m2;

  // Union with a disjoint set (Chan et al.): means average by count, M2 gains δ²·n_a·n_b/n.
  __device__ __forceinline__ void merge(const Moments& b) {
    const acc_t total = count + b.count;
    const acc_t weight_b = total > acc_t(0) ? b.count / total : acc_t(0);
    const acc_t delta = b.mean - mean;
    mean += delta * weight_b;
    m2 += b.m2 + delta * delta * count * weight_b;
    count = total;
  }

  // Welford step for one value, given inv = 1 / (count + 1).
  __device__ __forceinline__ void push(acc_t v, acc_t inv) {
    count += acc_t(1);
    const acc_t delta = v - mean;
    mean += delta * inv;
    m2 += delta * (v - mean);
  }
};

template <typename acc_t>
struct GradSums {
  acc_t dy, dy_xmu;

  __device__ __forceinline__ void merge(const GradSums& b) {
    dy += b.dy;
    dy_xmu += b.dy_xmu;
  }
};

// Merges the states of the `height` threads of each column `col` of a (width × height) block
// through shared memory; the result is valid in row 0. height must be a power of two.
template <typename State>
__device__ State column_reduce(State s, State* smem, int col, int row, int width, int height) {
  smem[row * width + col] = s;
  __syncthreads();
  for (int half = height / 2; half > 0; half /= 2) {
    if (row < half) {
      s.merge(smem[(row + half) * width + col]);
      smem[row * width + col] = s;
    }
    __syncthreads();
  }
  return s;
}

// ---- what the reduction passes compute ---------------------------------------------------------
// accumulate_run: VEC consecutive positions of channel c; accumulate_row: VEC consecutive
// channels c0.. of one position; store: the block's partial of channel c for split `split`.

template <typename scalar_t, typename acc_t>
struct StatsOp {
  using State = Moments<acc_t>;
  const scalar_t* x;
  acc_t* partials;  // [3][splits][C]: count, mean, M2
  int64_t channels, plane;

  template <int VEC>
  __device__ __forceinline__ void accumulate_run(State& s, int64_t offset, int64_t) const {
    acc_t v[VEC];
    load<VEC>(x + offset, v);
    acc_t sum = 0;
#pragma unroll
    for (int j = 0; j < VEC; ++j) sum += v[j];
    const acc_t mean = sum / acc_t(VEC);
    acc_t m2 = 0;
#pragma unroll
    for (int j = 0; j < VEC; ++j) m2 += (v[j] - mean) * (v[j] - mean);
    s.merge(State{acc_t(VEC), mean, m2});
  }

  template <int VEC>
  __device__ __forceinline__ void accumulate_row(State (&s)[VEC], int64_t offset, int64_t) const {
    acc_t v[VEC];
    load<VEC>(x + offset, v);
    // A thread's VEC channels have seen the same rows: one reciprocal serves them all.
    const acc_t inv = acc_t(1) / (s[0].count + acc_t(1));
#pragma unroll
    for (int j = 0; j < VEC; ++j) s[j].push(v[j], inv);
  }

  __device__ __forceinline__ void store(const State& s, int split, int64_t c) const {
    acc_t* p = partials + split * channels + c;
    p[0] = s.count;
    p[plane] = s.mean;
    p[2 * plane] = s.m2;
  }
};

template <typename scalar_t, typename acc_t>
struct GradSumsOp {
  using State = GradSums<acc_t>;
  const scalar_t* dy;
  const scalar_t* x;
  const acc_t* mean;
  acc_t* partials;  // [2][splits][C]: Σdy, Σdy·(x − μ)
  int64_t channels, plane;

  template <int VEC>
  __device__ __forceinline__ void accumulate_run(State& s, int64_t offset, int64_t c) const {
    acc_t g[VEC], v[VEC];
    load<VEC>(dy + offset, g);
    load<VEC>(x + offset, v);
    const acc_t m = __ldg(mean + c);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      s.dy += g[j];
      s.dy_xmu += g[j] * (v[j] - m);
    }
  }

  template <int VEC>
  __device__ __forceinline__ void accumulate_row(State (&s)[VEC], int64_t offset,
                                                 int64_t c0) const {
    acc_t g[VEC], v[VEC];
    load<VEC>(dy + offset, g);
    load<VEC>(x + offset, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      s[j].dy += g[j];
      s[j].dy_xmu += g[j] * (v[j] - __ldg(mean + c0 + j));
    }
  }

  __device__ __forceinline__ void store(const State& s, int split, int64_t c) const {
    acc_t* p = partials + split * channels + c;
    p[0] = s.dy;
    p[plane] = s.dy_xmu;
  }
};

// ---- reduction kernels -------------------------------------------------------------------------

// Walks units u = n·per_row + v (the v-th vector of row n) in steps of `step` units, keeping
// (n, v) up to date without a division per step.
struct RowWalker {
  int64_t n, v, per_row, step_n, step_v;

  __device__ RowWalker(int64_t u, int64_t per_row_, int64_t step)
      : n(u / per_row_), v(u % per_row_), per_row(per_row_), step_n(step / per_row_),
        step_v(step % per_row_) {}

  __device__ __forceinline__ void advance() {
    n += step_n;
    v += step_v;
    if (v >= per_row) {
      v -= per_row;
      ++n;
    }
  }
};

// Channels-first: block (channel blockIdx.x, split blockIdx.y), kThreads threads in x.
template <int VEC, typename Op>
__global__ void __launch_bounds__(kThreads)
    reduce_channels_first_kernel(Op op, int64_t N, int64_t C, int64_t S, int64_t units_per_split) {
  __shared__ typename Op::State smem[kThreads];
  const int64_t c = blockIdx.x;
  const int64_t per_row = S / VEC;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * units_per_split;
  const int64_t end = smaller(N * per_row, begin + units_per_split);
  typename Op::State state{};
  RowWalker walk(begin + threadIdx.x, per_row, kThreads);
  for (int64_t u = begin + threadIdx.x; u < end; u += kThreads, walk.advance())
    op.template accumulate_run<VEC>(state, (walk.n * C + c) * S + walk.v * VEC, c);
  state = column_reduce(state, smem, 0, threadIdx.x, 1, kThreads);
  if (threadIdx.x == 0) op.store(state, blockIdx.y, c);
}

// Channels-last: block (blockDim.x·VEC channels, blockDim.y rows at a time), split blockIdx.y.
template <int VEC, typename Op>
__global__ void __launch_bounds__(kThreads)
    reduce_channels_last_kernel(Op op, int64_t rows, int64_t C, int64_t rows_per_split) {
  __shared__ typename Op::State smem[kThreads];
  const int64_t c0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  const bool active = c0 < C;  // C % VEC == 0 when VEC > 1, so all VEC channels exist
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * rows_per_split;
  const int64_t end = smaller(rows, begin + rows_per_split);
  typename Op::State state[VEC] = {};
  if (active) {
    for (int64_t r = begin + threadIdx.y; r < end; r += blockDim.y)
      op.template accumulate_row<VEC>(state, r * C + c0, c0);
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const auto s = column_reduce(state[j], smem, threadIdx.x, threadIdx.y, blockDim.x, blockDim.y);
    if (threadIdx.y == 0 && active) op.store(s, blockIdx.y, c0 + j);
  }
}

// Threads along the channels in a channels-last block: a power of two ≤ 32 covering C / VEC.
int channels_last_width(int64_t C, int vec) {
  int width = 1;
  while (width < 32 && width * vec < C) width *= 2;
  return width;
}

template <int VEC, typename Op>
void launch_reduce(const Op& op, const StochNormShape& shape, int splits, cudaStream_t stream) {
  if (!shape.channels_last) {
    const int64_t per_split = ceil_div(shape.n * (shape.s / VEC), splits);
    const dim3 grid(static_cast<unsigned>(shape.c), static_cast<unsigned>(splits));
    reduce_channels_first_kernel<VEC><<<grid, kThreads, 0, stream>>>(
        op, shape.n, shape.c, shape.s, per_split);
  } else {
    const int width = channels_last_width(shape.c, VEC);
    const int64_t rows = shape.n * shape.s;
    const dim3 grid(static_cast<unsigned>(ceil_div(shape.c, static_cast<int64_t>(width) * VEC)),
                    static_cast<unsigned>(splits));
    reduce_channels_last_kernel<VEC><<<grid, dim3(width, kThreads / width), 0, stream>>>(
        op, rows, shape.c, ceil_div(rows, splits));
  }
}

// 16-byte accesses need aligned pointers and vectors that stay inside one channel (channels-
// first: S % VEC == 0) or one position (channels-last: C % VEC == 0).
template <typename scalar_t>
bool vectorizable(const StochNormShape& shape, const void* a, const void* b, const void* c) {
  const int64_t run = shape.channels_last ? shape.c : shape.s;
  return run % kVec<scalar_t> == 0 && aligned16(a) && aligned16(b) && aligned16(c);
}

template <typename scalar_t, typename Op>
cudaError_t reduce(const Op& op, bool vec, const StochNormShape& shape, int splits,
                   cudaStream_t stream) {
  if (vec) {
    launch_reduce<kVec<scalar_t>>(op, shape, splits, stream);
  } else {
    launch_reduce<1>(op, shape, splits, stream);
  }
  return cudaGetLastError();
}

// ---- per-channel combine kernels ---------------------------------------------------------------

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    stats_combine_kernel(const acc_t* partials, int splits, int64_t C, const acc_t* weight,
                         const acc_t* bias, const acc_t* running_mean, const acc_t* running_var,
                         const bool* mask, acc_t eps, acc_t* batch_mean, acc_t* batch_var,
                         acc_t* save_mean, acc_t* save_invstd, acc_t* scale, acc_t* shift) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int64_t plane = splits * C;
  Moments<acc_t> m{};
  for (int k = 0; k < splits; ++k) {
    const acc_t* p = partials + k * C + c;
    m.merge(Moments<acc_t>{p[0], p[plane], p[2 * plane]});
  }
  const acc_t var = m.m2 / m.count;  // count = N·S ≥ 1
  batch_mean[c] = m.mean;
  batch_var[c] = var;
  if (mask == nullptr) return;  // the stats phase: no selection
  const bool batch = mask[c];
  const acc_t invstd = acc_t(1) / sqrt((batch ? var : running_var[c]) + eps);
  save_mean[c] = batch ? m.mean : running_mean[c];
  save_invstd[c] = invstd;
  scale[c] = weight == nullptr ? invstd : invstd * weight[c];
  shift[c] = bias == nullptr ? acc_t(0) : bias[c];
}

// The elemt phase's write coefficients: scale = γ·invstd, shift = β.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    elemt_coefficients_kernel(int64_t C, const acc_t* weight, const acc_t* bias,
                              const acc_t* invstd, acc_t* scale, acc_t* shift) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  scale[c] = weight == nullptr ? invstd[c] : invstd[c] * weight[c];
  shift[c] = bias == nullptr ? acc_t(0) : bias[c];
}

// dx = γ·invstd·(dy − s·Σdy/n − x̂·s·Σdy·x̂/n) = k_dy·dy + k_xmu·(x − μ) + k_const, n = count.
template <typename acc_t>
__device__ __forceinline__ void store_grad_coefficients(int64_t c, acc_t count,
                                                        const acc_t* weight, const bool* mask,
                                                        acc_t invstd, acc_t sum_dy,
                                                        acc_t sum_dy_xhat, acc_t* k_dy,
                                                        acc_t* k_xmu, acc_t* k_const) {
  const acc_t gamma_invstd = weight == nullptr ? invstd : weight[c] * invstd;
  const acc_t per_value = mask[c] ? gamma_invstd / count : acc_t(0);
  k_dy[c] = gamma_invstd;
  k_xmu[c] = -per_value * invstd * sum_dy_xhat;
  k_const[c] = -per_value * sum_dy;
}

// Σdy and Σdy·x̂ per channel from the splits' partials; with k_dy non-null (the fused backward,
// whose sums run over x's own `count` values) also the write pass's coefficients.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    grad_sums_kernel(const acc_t* partials, int splits, int64_t C, const acc_t* invstd,
                     acc_t* sum_dy, acc_t* sum_dy_xhat, acc_t count, const acc_t* weight,
                     const bool* mask, acc_t* k_dy, acc_t* k_xmu, acc_t* k_const) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int64_t plane = splits * C;
  acc_t dy = 0, dy_xmu = 0;
  for (int k = 0; k < splits; ++k) {
    dy += partials[k * C + c];
    dy_xmu += partials[plane + k * C + c];
  }
  const acc_t dy_xhat = dy_xmu * invstd[c];
  sum_dy[c] = dy;
  sum_dy_xhat[c] = dy_xhat;
  if (k_dy != nullptr)
    store_grad_coefficients(c, count, weight, mask, invstd[c], dy, dy_xhat, k_dy, k_xmu, k_const);
}

// The write pass's coefficients from given sums and count (backward_elemt).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    grad_coefficients_kernel(int64_t C, acc_t count, const acc_t* weight, const bool* mask,
                             const acc_t* invstd, const acc_t* sum_dy, const acc_t* sum_dy_xhat,
                             acc_t* k_dy, acc_t* k_xmu, acc_t* k_const) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  store_grad_coefficients(c, count, weight, mask, invstd[c], sum_dy[c], sum_dy_xhat[c], k_dy,
                          k_xmu, k_const);
}

// ---- write pass --------------------------------------------------------------------------------

// n / d for a fixed divisor 1 ≤ d < 2^31 and dividends n < 2^31, as a multiply-high and a shift:
// with s = ⌈log2 d⌉ and m = ⌊2^32·(2^s − d)/d⌋ + 1, n / d = (umulhi(n, m) + n) >> s.
struct IntDivider {
  uint32_t magic = 1, shift = 0;

  IntDivider() = default;
  explicit IntDivider(uint32_t d) {
    while ((uint64_t{1} << shift) < d) ++shift;
    magic = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d)) / d + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const {
    return (__umulhi(n, magic) + n) >> shift;
  }
};

// Channel of the element at flat offset e; 32-bit divisions by multiplication when the tensor
// has fewer than 2^31 elements.
struct ChannelOf {
  int64_t channels, positions;
  bool channels_last, small;
  IntDivider by_positions, by_channels;

  ChannelOf(const StochNormShape& shape)
      : channels(shape.c), positions(shape.s), channels_last(shape.channels_last),
        small(shape.n * shape.c * shape.s < (int64_t{1} << 31)) {
    if (small) {
      by_positions = IntDivider(static_cast<uint32_t>(shape.s));
      by_channels = IntDivider(static_cast<uint32_t>(shape.c));
    }
  }

  __device__ __forceinline__ int64_t operator()(int64_t e) const {
    if (small) {
      const uint32_t plane = channels_last ? static_cast<uint32_t>(e)
                                           : by_positions.div(static_cast<uint32_t>(e));
      return plane - by_channels.div(plane) * static_cast<uint32_t>(channels);
    }
    return (channels_last ? e : e / positions) % channels;
  }
};

template <typename acc_t>
struct Coefficients {
  const acc_t* mean;
  const acc_t* k_xmu;
  const acc_t* k_const;
  const acc_t* k_dy;  // read only when HAS_DY
};

// out = k_xmu[c]·(x − μ[c]) + k_const[c] (+ k_dy[c]·dy when HAS_DY), VEC values per step.
template <int VEC, bool HAS_DY, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    affine_write_kernel(const scalar_t* x, const scalar_t* dy, scalar_t* out, int64_t units,
                        ChannelOf channel_of, Coefficients<acc_t> k) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; u < units;
       u += stride) {
    const int64_t e = u * VEC;
    acc_t v[VEC], g[VEC];
    load<VEC>(x + e, v);
    if constexpr (HAS_DY) load<VEC>(dy + e, g);
    const int64_t c0 = channel_of(e);
    Pack<scalar_t, VEC> result;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      // A vector spans VEC channels in channels-last memory, one channel otherwise.
      const int64_t c = channel_of.channels_last ? c0 + j : c0;
      acc_t o = __ldg(k.k_xmu + c) * (v[j] - __ldg(k.mean + c)) + __ldg(k.k_const + c);
      if constexpr (HAS_DY) o += __ldg(k.k_dy + c) * g[j];
      result.v[j] = narrow<scalar_t>(o);
    }
    *reinterpret_cast<Pack<scalar_t, VEC>*>(out + e) = result;
  }
}

template <bool HAS_DY, typename scalar_t, typename acc_t>
cudaError_t write(const StochNormShape& shape, const StochNormPlan& plan, const scalar_t* x,
                  const scalar_t* dy, scalar_t* out, const Coefficients<acc_t>& k,
                  cudaStream_t stream) {
  const int64_t numel = shape.n * shape.c * shape.s;
  const bool vec = vectorizable<scalar_t>(shape, x, dy, out);
  const int step = vec ? kVec<scalar_t> : 1;
  const int64_t units = numel / step;
  const int64_t blocks = std::max<int64_t>(
      1, std::min<int64_t>(ceil_div(units, kThreads),
                           static_cast<int64_t>(plan.sm_count) * kWriteBlocksPerSm));
  if (vec) {
    affine_write_kernel<kVec<scalar_t>, HAS_DY><<<blocks, kThreads, 0, stream>>>(
        x, dy, out, units, ChannelOf(shape), k);
  } else {
    affine_write_kernel<1, HAS_DY><<<blocks, kThreads, 0, stream>>>(x, dy, out, units,
                                                                    ChannelOf(shape), k);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t stoch_norm_plan(const StochNormShape& shape, StochNormPlan* plan) {
  int device = 0;
  if (cudaError_t err = cudaGetDevice(&device)) return err;
  if (cudaError_t err =
          cudaDeviceGetAttribute(&plan->sm_count, cudaDevAttrMultiProcessorCount, device))
    return err;
  // Blocks along the channels in the grid (the fewest any vector width gives), then enough splits
  // of N·S to reach kBlocksPerSm blocks per SM without starving threads of work.
  const int64_t values = shape.n * shape.s;
  int64_t channel_blocks = shape.c, threads_per_split = kThreads;
  if (shape.channels_last) {
    const int width = channels_last_width(shape.c, 8);
    channel_blocks = ceil_div(shape.c, width * 8);
    threads_per_split = kThreads / width;
  }
  const int64_t wanted = ceil_div(static_cast<int64_t>(kBlocksPerSm) * plan->sm_count,
                                  channel_blocks);
  const int64_t affordable = ceil_div(values, threads_per_split * kMinValuesPerThread);
  plan->splits = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>({wanted, affordable, int64_t{kMaxGridY}})));
  // Forward: partials 3·splits·C + scale, shift; backward: 2·splits·C + three coefficients. Each
  // phase needs a part of that.
  plan->workspace_elems = 3 * plan->splits * shape.c + 3 * shape.c;
  return cudaSuccess;
}

template <typename scalar_t, typename acc_t>
cudaError_t stoch_norm_stats(const StochNormShape& shape, const StochNormPlan& plan,
                             const scalar_t* x, acc_t* mean, acc_t* var, acc_t* workspace,
                             cudaStream_t stream) {
  const int64_t C = shape.c, plane = plan.splits * C;
  const StatsOp<scalar_t, acc_t> op{x, workspace, C, plane};
  const bool vec = vectorizable<scalar_t>(shape, x, nullptr, nullptr);
  if (cudaError_t err = reduce<scalar_t>(op, vec, shape, plan.splits, stream)) return err;
  stats_combine_kernel<acc_t><<<ceil_div(C, kThreads), kThreads, 0, stream>>>(
      workspace, plan.splits, C, nullptr, nullptr, nullptr, nullptr, nullptr, acc_t(0), mean, var,
      nullptr, nullptr, nullptr, nullptr);
  return cudaGetLastError();
}

template <typename scalar_t, typename acc_t>
cudaError_t stoch_norm_elemt(const StochNormShape& shape, const StochNormPlan& plan,
                             const scalar_t* x, const acc_t* weight, const acc_t* bias,
                             const acc_t* save_mean, const acc_t* save_invstd, scalar_t* y,
                             acc_t* workspace, cudaStream_t stream) {
  const int64_t C = shape.c;
  acc_t* scale = workspace;
  acc_t* shift = scale + C;
  elemt_coefficients_kernel<acc_t><<<ceil_div(C, kThreads), kThreads, 0, stream>>>(
      C, weight, bias, save_invstd, scale, shift);
  if (cudaError_t err = cudaGetLastError()) return err;
  return write<false>(shape, plan, x, static_cast<const scalar_t*>(nullptr), y,
                      Coefficients<acc_t>{save_mean, scale, shift, nullptr}, stream);
}

template <typename scalar_t, typename acc_t>
cudaError_t stoch_norm_backward_reduce(const StochNormShape& shape, const StochNormPlan& plan,
                                       const scalar_t* grad_y, const scalar_t* x,
                                       const acc_t* save_mean, const acc_t* save_invstd,
                                       acc_t* sum_dy, acc_t* sum_dy_xhat, acc_t* workspace,
                                       cudaStream_t stream) {
  const int64_t C = shape.c, plane = plan.splits * C;
  const GradSumsOp<scalar_t, acc_t> op{grad_y, x, save_mean, workspace, C, plane};
  const bool vec = vectorizable<scalar_t>(shape, x, grad_y, nullptr);
  if (cudaError_t err = reduce<scalar_t>(op, vec, shape, plan.splits, stream)) return err;
  grad_sums_kernel<acc_t><<<ceil_div(C, kThreads), kThreads, 0, stream>>>(
      workspace, plan.splits, C, save_invstd, sum_dy, sum_dy_xhat, acc_t(0), nullptr, nullptr,
      nullptr, nullptr, nullptr);
  return cudaGetLastError();
}

template <typename scalar_t, typename acc_t>
cudaError_t stoch_norm_backward_elemt(const StochNormShape& shape, const StochNormPlan& plan,
                                      const scalar_t* grad_y, const scalar_t* x,
                                      const acc_t* weight, const bool* mask,
                                      const acc_t* save_mean, const acc_t* save_invstd,
                                      const acc_t* sum_dy, const acc_t* sum_dy_xhat,
                                      int64_t count, scalar_t* grad_x, acc_t* workspace,
                                      cudaStream_t stream) {
  const int64_t C = shape.c;
  acc_t* k_dy = workspace;
  acc_t* k_xmu = k_dy + C;
  acc_t* k_const = k_xmu + C;
  grad_coefficients_kernel<acc_t><<<ceil_div(C, kThreads), kThreads, 0, stream>>>(
      C, static_cast<acc_t>(count), weight, mask, save_invstd, sum_dy, sum_dy_xhat, k_dy, k_xmu,
      k_const);
  if (cudaError_t err = cudaGetLastError()) return err;
  return write<true>(shape, plan, x, grad_y, grad_x,
                     Coefficients<acc_t>{save_mean, k_xmu, k_const, k_dy}, stream);
}

// The fused forward is the stats phase's reduction, one combine that also selects per channel
// and computes the write coefficients, and the elemt phase's write: three launches.
template <typename scalar_t, typename acc_t>
cudaError_t stoch_norm_forward(const StochNormShape& shape, const StochNormPlan& plan,
                               const scalar_t* x, const acc_t* weight, const acc_t* bias,
                               const acc_t* running_mean, const acc_t* running_var,
                               const bool* mask, double eps, scalar_t* y, acc_t* save_mean,
                               acc_t* save_invstd, acc_t* batch_mean, acc_t* batch_var,
                               acc_t* workspace, cudaStream_t stream) {
  const int64_t C = shape.c, plane = plan.splits * C;
  acc_t* scale = workspace + 3 * plane;
  acc_t* shift = scale + C;
  const StatsOp<scalar_t, acc_t> op{x, workspace, C, plane};
  const bool vec = vectorizable<scalar_t>(shape, x, nullptr, nullptr);
  if (cudaError_t err = reduce<scalar_t>(op, vec, shape, plan.splits, stream)) return err;
  stats_combine_kernel<acc_t><<<ceil_div(C, kThreads), kThreads, 0, stream>>>(
      workspace, plan.splits, C, weight, bias, running_mean, running_var, mask,
      static_cast<acc_t>(eps), batch_mean, batch_var, save_mean, save_invstd, scale, shift);
  if (cudaError_t err = cudaGetLastError()) return err;
  return write<false>(shape, plan, x, static_cast<const scalar_t*>(nullptr), y,
                      Coefficients<acc_t>{save_mean, scale, shift, nullptr}, stream);
}

// The fused backward is backward_reduce's reduction, one combine that also computes
// backward_elemt's coefficients for x's own N·S values, and backward_elemt's write: three
// launches, as forward.
template <typename scalar_t, typename acc_t>
cudaError_t stoch_norm_backward(const StochNormShape& shape, const StochNormPlan& plan,
                                const scalar_t* grad_y, const scalar_t* x, const acc_t* weight,
                                const bool* mask, const acc_t* save_mean,
                                const acc_t* save_invstd, scalar_t* grad_x, acc_t* grad_weight,
                                acc_t* grad_bias, acc_t* workspace, cudaStream_t stream) {
  const int64_t C = shape.c, plane = plan.splits * C;
  acc_t* k_dy = workspace + 2 * plane;
  acc_t* k_xmu = k_dy + C;
  acc_t* k_const = k_xmu + C;
  const GradSumsOp<scalar_t, acc_t> op{grad_y, x, save_mean, workspace, C, plane};
  const bool vec = vectorizable<scalar_t>(shape, x, grad_y, nullptr);
  if (cudaError_t err = reduce<scalar_t>(op, vec, shape, plan.splits, stream)) return err;
  grad_sums_kernel<acc_t><<<ceil_div(C, kThreads), kThreads, 0, stream>>>(
      workspace, plan.splits, C, save_invstd, grad_bias, grad_weight,
      static_cast<acc_t>(shape.n * shape.s), weight, mask, k_dy, k_xmu, k_const);
  if (cudaError_t err = cudaGetLastError()) return err;
  return write<true>(shape, plan, x, grad_y, grad_x,
                     Coefficients<acc_t>{save_mean, k_xmu, k_const, k_dy}, stream);
}

#define TLTORCH_EXT_STOCH_NORM_INSTANTIATE(scalar_t, acc_t)                                     \
  template cudaError_t stoch_norm_forward<scalar_t, acc_t>(                                     \
      const StochNormShape&, const StochNormPlan&, const scalar_t*, const acc_t*, const acc_t*, \
      const acc_t*, const acc_t*, const bool*, double, scalar_t*, acc_t*, acc_t*, acc_t*,        \
      acc_t*, acc_t*, cudaStream_t);                                                            \
  template cudaError_t stoch_norm_backward<scalar_t, acc_t>(                                    \
      const StochNormShape&, const StochNormPlan&, const scalar_t*, const scalar_t*,            \
      const acc_t*, const bool*, const acc_t*, const acc_t*, scalar_t*, acc_t*, acc_t*, acc_t*, \
      cudaStream_t);                                                                            \
  template cudaError_t stoch_norm_stats<scalar_t, acc_t>(                                       \
      const StochNormShape&, const StochNormPlan&, const scalar_t*, acc_t*, acc_t*, acc_t*,     \
      cudaStream_t);                                                                            \
  template cudaError_t stoch_norm_elemt<scalar_t, acc_t>(                                       \
      const StochNormShape&, const StochNormPlan&, const scalar_t*, const acc_t*, const acc_t*, \
      const acc_t*, const acc_t*, scalar_t*, acc_t*, cudaStream_t);                             \
  template cudaError_t stoch_norm_backward_reduce<scalar_t, acc_t>(                             \
      const StochNormShape&, const StochNormPlan&, const scalar_t*, const scalar_t*,            \
      const acc_t*, const acc_t*, acc_t*, acc_t*, acc_t*, cudaStream_t);                        \
  template cudaError_t stoch_norm_backward_elemt<scalar_t, acc_t>(                              \
      const StochNormShape&, const StochNormPlan&, const scalar_t*, const scalar_t*,            \
      const acc_t*, const bool*, const acc_t*, const acc_t*, const acc_t*, const acc_t*,        \
      int64_t, scalar_t*, acc_t*, cudaStream_t);
TLTORCH_EXT_STOCH_NORM_INSTANTIATE(float, float)
TLTORCH_EXT_STOCH_NORM_INSTANTIATE(__half, float)
TLTORCH_EXT_STOCH_NORM_INSTANTIATE(__nv_bfloat16, float)
TLTORCH_EXT_STOCH_NORM_INSTANTIATE(double, double)
#undef TLTORCH_EXT_STOCH_NORM_INSTANTIATE

}  // namespace tltorch_ext::cuda
