// StochNorm on CPU (docs/api_stochnorm.md); same functions and results as
// tltorch_ext/reference/stoch_norm.py.
//
// x is viewed as (N, C, S) (see StochNormLayout in stoch_norm.h). Forward: one statistics pass (count,
// mean and M2 = Σ(x − mean)² per channel) and one write pass y = (x − μ_c)·scale_c + β_c with the
// batch or running statistics chosen per channel by the mask. Backward: one pass for Σdy and
// Σdy·(x − μ_c) per channel and one write pass dx = k_dy·dy + k_xmu·(x − μ_c) + k_c.
// Contiguous inputs are parallel over channels (each channel is N runs of S values); channels_last
// inputs are parallel over blocks of rows (one row = C channel values) with per-thread partials
// combined at the end. Accumulation is in float32 (float64 for double inputs).
//
// The loops (stoch_norm_kernels.inc) are plain C++ that gcc vectorizes, built three times: for the
// baseline x86-64 (SSE2) the extension is compiled for, for AVX2 + FMA and for AVX512; the build
// matching ATen's CPU capability runs (at::get_cpu_capability(), which ATEN_CPU_CAPABILITY=avx2 or
// =default lowers). bfloat16 values are widened and rounded by integer operations on their bits,
// so that its loops vectorize as well as float32's.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <c10/util/BFloat16.h>
#include <c10/util/bit_cast.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "stoch_norm.h"

namespace tltorch_ext {
namespace {

// Values per statistics chunk: the chunk is read twice (sum, then centred squares), the second time
// from L1 (16 KiB in float32).
constexpr int64_t kChunk = 4096;
// Values per parallel task at least, so that small tensors are not split into many tiny tasks.
constexpr int64_t kGrainValues = 1 << 15;

int64_t grain_for(int64_t values_per_item) {
  return std::max<int64_t>(1, kGrainValues / std::max<int64_t>(values_per_item, 1));
}

// Moments of a set of values: count, mean and M2 = Σ(v − mean)². Two sets merge exactly (Chan et
// al.): the means average by count, and M2 gains δ²·n_a·n_b/(n_a + n_b), δ the difference of
// the means. Merging moments of cache-sized chunks keeps the one pass over memory while avoiding
// the cancellation of Σv² − (Σv)²/n.
template <typename acc_t>
struct Moments {
  acc_t count = 0, mean = 0, m2 = 0;

  void merge(acc_t count_b, acc_t mean_b, acc_t m2_b) {
    const acc_t total = count + count_b;
    if (total == 0) return;
    const acc_t delta = mean_b - mean;
    const acc_t weight_b = count_b / total;
    mean += delta * weight_b;
    m2 += m2_b + delta * delta * count * weight_b;
    count = total;
  }
};

// Splits `rows` rows into at most one part per thread; calls part_fn(part, row_begin, row_end) in
// parallel and returns the number of parts (each writes its own partials, combined serially after).
template <typename F>
int64_t for_each_row_part(int64_t rows, int64_t row_values, const F& part_fn) {
  const int64_t parts =
      std::clamp<int64_t>(rows / grain_for(row_values), 1, at::get_num_threads());
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t part = begin; part < end; ++part)
      part_fn(part, rows * part / parts, rows * (part + 1) / parts);
  });
  return parts;
}

template <typename acc_t>
struct ChannelCoefficients {
  const acc_t* mean;
  const acc_t* k_xmu;
  const acc_t* k_const;
  const acc_t* k_dy;  // read only when HAS_DY
};

// out[i] = value in out's dtype. For bfloat16 this is c10's round-to-nearest-even (NaN stays a
// quiet NaN) on the float's bits, written to the bits: c10::BFloat16(float) goes through a
// temporary that keeps gcc from vectorizing the loop around it.
template <typename scalar_t, typename acc_t>
inline void store(scalar_t* out, int64_t i, acc_t value) {
  out[i] = static_cast<scalar_t>(value);
}

inline void store(c10::BFloat16* out, int64_t i, float value) {
  const uint32_t bits = c10::bit_cast<uint32_t>(value);
  const uint32_t rounded = (bits + UINT32_C(0x7fff) + ((bits >> 16) & 1)) >> 16;
  out[i].x = static_cast<uint16_t>(value != value ? UINT32_C(0x7fc0) : rounded);
}

// ---------------------------------------------------------------------------------------------
// The kernels, once per instruction set.

namespace portable {
#include "stoch_norm_kernels.inc"
}  // namespace portable

// gcc compiles what is defined between these pragmas for the named instruction set, the lambdas
// inside the kernels included; the torch and std templates they call were defined above and stay
// baseline. The sets are those of ATen's own AVX2 and AVX512 kernel builds.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define TLTORCH_EXT_STOCH_NORM_X86_BUILDS
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "stoch_norm_kernels.inc"
}  // namespace avx2
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")
namespace avx512 {
#include "stoch_norm_kernels.inc"
}  // namespace avx512
#pragma GCC pop_options
#endif

enum class KernelBuild { kPortable, kAvx2, kAvx512 };

// The build that runs: the one matching ATen's CPU capability ("AVX512", "AVX2" or "DEFAULT",
// which ATEN_CPU_CAPABILITY may lower), decided once, so that ours never uses instructions ATen
// was told to avoid.
KernelBuild kernel_build() {
#ifdef TLTORCH_EXT_STOCH_NORM_X86_BUILDS
  static const KernelBuild build = [] {
    const std::string capability = at::get_cpu_capability();
    if (capability.rfind("AVX512", 0) == 0) return KernelBuild::kAvx512;
    if (capability == "AVX2") return KernelBuild::kAvx2;
    return KernelBuild::kPortable;
  }();
  return build;
#else
  return KernelBuild::kPortable;
#endif
}

#ifdef TLTORCH_EXT_STOCH_NORM_X86_BUILDS
#define TLTORCH_EXT_STOCH_NORM_KERNEL(call)                                  \
  (kernel_build() == KernelBuild::kAvx512 ? avx512::call                    \
   : kernel_build() == KernelBuild::kAvx2 ? avx2::call                      \
                                          : portable::call)
#else
#define TLTORCH_EXT_STOCH_NORM_KERNEL(call) portable::call
#endif

// The kernels under their own names, each running the build chosen above.

// Statistics: per-channel (mean, biased variance) of x.
template <typename scalar_t, typename acc_t>
void batch_stats_channels_first(const scalar_t* x, const StochNormLayout& l, acc_t* mean,
                                acc_t* var) {
  TLTORCH_EXT_STOCH_NORM_KERNEL(batch_stats_channels_first(x, l, mean, var));
}

template <typename scalar_t, typename acc_t>
void batch_stats_channels_last(const scalar_t* x, const StochNormLayout& l, acc_t* mean,
                               acc_t* var) {
  TLTORCH_EXT_STOCH_NORM_KERNEL(batch_stats_channels_last(x, l, mean, var));
}

// out = k_xmu[c]·(x − μ[c]) + k_const[c]  (+ k_dy[c]·dy when HAS_DY).
template <bool HAS_DY, typename scalar_t, typename acc_t>
void affine_write(const scalar_t* x, const scalar_t* dy, scalar_t* out, const StochNormLayout& l,
                  const ChannelCoefficients<acc_t>& k) {
  TLTORCH_EXT_STOCH_NORM_KERNEL(affine_write<HAS_DY>(x, dy, out, l, k));
}

// Σdy and Σdy·(x − μ_c) per channel.
template <typename scalar_t, typename acc_t>
void grad_sums_channels_first(const scalar_t* dy, const scalar_t* x, const acc_t* mean,
                              const StochNormLayout& l, acc_t* sum_dy, acc_t* sum_dy_xmu) {
  TLTORCH_EXT_STOCH_NORM_KERNEL(grad_sums_channels_first(dy, x, mean, l, sum_dy, sum_dy_xmu));
}

template <typename scalar_t, typename acc_t>
void grad_sums_channels_last(const scalar_t* dy, const scalar_t* x, const acc_t* mean,
                             const StochNormLayout& l, acc_t* sum_dy, acc_t* sum_dy_xmu) {
  TLTORCH_EXT_STOCH_NORM_KERNEL(grad_sums_channels_last(dy, x, mean, l, sum_dy, sum_dy_xmu));
}

template <typename acc_t>
const acc_t* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<acc_t>() : nullptr;
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "stoch_norm_*_cpu: ", name, " must be a CPU tensor, got ",
              t.device());
}

// ---------------------------------------------------------------------------------------------
// The phases, as the entry points below compose them (the fused forward/backward and the phase
// ops run the same code).

template <typename scalar_t, typename acc_t>
void batch_stats(const scalar_t* x, const StochNormLayout& l, acc_t* mean, acc_t* var) {
  if (l.channels_last) {
    batch_stats_channels_last(x, l, mean, var);
  } else {
    batch_stats_channels_first(x, l, mean, var);
  }
}

// y = (x − μ)·γ·invstd + β; weight and bias may be null (γ = 1, β = 0).
template <typename scalar_t, typename acc_t>
void normalize(const scalar_t* x, scalar_t* y, const StochNormLayout& l, const acc_t* save_mean,
               const acc_t* save_invstd, const acc_t* weight, const acc_t* bias) {
  std::vector<acc_t> scale(l.c), shift(l.c);
  for (int64_t c = 0; c < l.c; ++c) {
    scale[c] = weight ? save_invstd[c] * weight[c] : save_invstd[c];
    shift[c] = bias ? bias[c] : acc_t(0);
  }
  const ChannelCoefficients<acc_t> coefficients{save_mean, scale.data(), shift.data(), nullptr};
  affine_write<false>(x, static_cast<const scalar_t*>(nullptr), y, l, coefficients);
}

// Σdy and Σdy·x̂ per channel.
template <typename scalar_t, typename acc_t>
void grad_sums(const scalar_t* dy, const scalar_t* x, const StochNormLayout& l,
               const acc_t* save_mean, const acc_t* save_invstd, acc_t* sum_dy,
               acc_t* sum_dy_xhat) {
  if (l.channels_last) {
    grad_sums_channels_last(dy, x, save_mean, l, sum_dy, sum_dy_xhat);
  } else {
    grad_sums_channels_first(dy, x, save_mean, l, sum_dy, sum_dy_xhat);
  }
  for (int64_t c = 0; c < l.c; ++c) sum_dy_xhat[c] *= save_invstd[c];  // Σdy·(x − μ) → Σdy·x̂
}

// dx = γ·invstd·(dy − s·Σdy/count − x̂·s·Σdy·x̂/count), x̂ = (x − μ)·invstd, s the mask; count is
// the number of values the sums ran over (more than x's own in a process group).
template <typename scalar_t, typename acc_t>
void grad_input(const scalar_t* dy, const scalar_t* x, scalar_t* dx, const StochNormLayout& l,
                const acc_t* weight, const bool* mask, const acc_t* save_mean,
                const acc_t* save_invstd, const acc_t* sum_dy, const acc_t* sum_dy_xhat,
                acc_t count) {
  std::vector<acc_t> k_dy(l.c), k_xmu(l.c), k_const(l.c);
  for (int64_t c = 0; c < l.c; ++c) {
    const acc_t gamma_invstd = (weight ? weight[c] : acc_t(1)) * save_invstd[c];
    const acc_t per_value = mask[c] ? gamma_invstd / count : acc_t(0);
    k_dy[c] = gamma_invstd;
    k_xmu[c] = -per_value * save_invstd[c] * sum_dy_xhat[c];
    k_const[c] = -per_value * sum_dy[c];
  }
  const ChannelCoefficients<acc_t> coefficients{save_mean, k_xmu.data(), k_const.data(),
                                                k_dy.data()};
  affine_write<true>(x, dy, dx, l, coefficients);
}

#define TLTORCH_EXT_STOCH_NORM_DISPATCH(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points. Fused forward: stats, then per channel batch or running statistics by the mask,
// then the elemt write; fused backward: backward_reduce, then backward_elemt with this call's
// own count.

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> stoch_norm_forward_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& running_mean,
    const at::Tensor& running_var, const at::Tensor& mask, double eps) {
  check_cpu(x, "x");
  const StochNormForwardArgs a(x, weight, bias, running_mean, running_var, mask);
  TLTORCH_EXT_STOCH_NORM_DISPATCH(a.input.scalar_type(), "stoch_norm_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = a.input.data_ptr<scalar_t>();
    acc_t* mean = a.batch_mean.data_ptr<acc_t>();
    acc_t* var = a.batch_var.data_ptr<acc_t>();
    batch_stats(xp, a.layout, mean, var);
    const bool* s = a.mask.data_ptr<bool>();
    const acc_t* rmp = a.running_mean.data_ptr<acc_t>();
    const acc_t* rvp = a.running_var.data_ptr<acc_t>();
    acc_t* sm = a.save_mean.data_ptr<acc_t>();
    acc_t* si = a.save_invstd.data_ptr<acc_t>();
    for (int64_t c = 0; c < a.layout.c; ++c) {
      sm[c] = s[c] ? mean[c] : rmp[c];
      si[c] = acc_t(1) / std::sqrt((s[c] ? var[c] : rvp[c]) + static_cast<acc_t>(eps));
    }
    normalize(xp, a.y.data_ptr<scalar_t>(), a.layout, sm, si, data_or_null<acc_t>(a.weight),
              data_or_null<acc_t>(a.bias));
  });
  return a.outputs();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> stoch_norm_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const at::Tensor& mask, const at::Tensor& save_mean, const at::Tensor& save_invstd) {
  check_cpu(x, "x");
  const StochNormBackwardArgs a(grad_y, x, weight, mask, save_mean, save_invstd);
  TLTORCH_EXT_STOCH_NORM_DISPATCH(a.input.scalar_type(), "stoch_norm_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = a.input.data_ptr<scalar_t>();
    const scalar_t* gp = a.grad_y.data_ptr<scalar_t>();
    const acc_t* mp = a.save_mean.data_ptr<acc_t>();
    const acc_t* ip = a.save_invstd.data_ptr<acc_t>();
    acc_t* sum_dy = a.grad_bias.data_ptr<acc_t>();
    acc_t* sum_dy_xhat = a.grad_weight.data_ptr<acc_t>();
    grad_sums(gp, xp, a.layout, mp, ip, sum_dy, sum_dy_xhat);
    grad_input(gp, xp, a.grad_x.data_ptr<scalar_t>(), a.layout, data_or_null<acc_t>(a.weight),
               a.mask.data_ptr<bool>(), mp, ip, sum_dy, sum_dy_xhat,
               static_cast<acc_t>(a.layout.n * a.layout.s));
  });
  return a.outputs();
}

std::tuple<at::Tensor, at::Tensor> stoch_norm_stats_cpu(const at::Tensor& x) {
  check_cpu(x, "x");
  const StochNormInput in(x);
  at::Tensor mean = in.new_channel_stat(), var = in.new_channel_stat();
  TLTORCH_EXT_STOCH_NORM_DISPATCH(in.input.scalar_type(), "stoch_norm_stats_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    batch_stats(in.input.data_ptr<scalar_t>(), in.layout, mean.data_ptr<acc_t>(),
                var.data_ptr<acc_t>());
  });
  return {mean, var};
}

at::Tensor stoch_norm_elemt_cpu(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                const std::optional<at::Tensor>& bias,
                                const at::Tensor& save_mean, const at::Tensor& save_invstd) {
  check_cpu(x, "x");
  const StochNormElemtArgs a(x, weight, bias, save_mean, save_invstd);
  TLTORCH_EXT_STOCH_NORM_DISPATCH(a.input.scalar_type(), "stoch_norm_elemt_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    normalize(a.input.data_ptr<scalar_t>(), a.y.data_ptr<scalar_t>(), a.layout,
              a.save_mean.data_ptr<acc_t>(), a.save_invstd.data_ptr<acc_t>(),
              data_or_null<acc_t>(a.weight), data_or_null<acc_t>(a.bias));
  });
  return a.y;
}

std::tuple<at::Tensor, at::Tensor> stoch_norm_backward_reduce_cpu(const at::Tensor& grad_y,
                                                                  const at::Tensor& x,
                                                                  const at::Tensor& save_mean,
                                                                  const at::Tensor& save_invstd) {
  check_cpu(x, "x");
  const StochNormBackwardReduceArgs a(grad_y, x, save_mean, save_invstd);
  TLTORCH_EXT_STOCH_NORM_DISPATCH(a.input.scalar_type(), "stoch_norm_backward_reduce_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    grad_sums(a.grad_y.data_ptr<scalar_t>(), a.input.data_ptr<scalar_t>(), a.layout,
              a.save_mean.data_ptr<acc_t>(), a.save_invstd.data_ptr<acc_t>(),
              a.sum_dy.data_ptr<acc_t>(), a.sum_dy_xhat.data_ptr<acc_t>());
  });
  return a.outputs();
}

at::Tensor stoch_norm_backward_elemt_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                         const std::optional<at::Tensor>& weight,
                                         const at::Tensor& mask, const at::Tensor& save_mean,
                                         const at::Tensor& save_invstd, const at::Tensor& sum_dy,
                                         const at::Tensor& sum_dy_xhat, int64_t count) {
  check_cpu(x, "x");
  const StochNormBackwardElemtArgs a(grad_y, x, weight, mask, save_mean, save_invstd, sum_dy,
                                     sum_dy_xhat, count);
  TLTORCH_EXT_STOCH_NORM_DISPATCH(a.input.scalar_type(), "stoch_norm_backward_elemt_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    grad_input(a.grad_y.data_ptr<scalar_t>(), a.input.data_ptr<scalar_t>(),
               a.grad_x.data_ptr<scalar_t>(), a.layout, data_or_null<acc_t>(a.weight),
               a.mask.data_ptr<bool>(), a.save_mean.data_ptr<acc_t>(),
               a.save_invstd.data_ptr<acc_t>(), a.sum_dy.data_ptr<acc_t>(),
               a.sum_dy_xhat.data_ptr<acc_t>(), static_cast<acc_t>(a.count));
  });
  return a.grad_x;
}

// The schemas are defined here, with the CPU kernels; csrc/cuda/stoch_norm_binding.cpp adds
// CUDA ones.
TORCH_LIBRARY_FRAGMENT(tltorch_ext_C, m) {
  m.def("stoch_norm_forward(Tensor x, Tensor? weight, Tensor? bias, Tensor running_mean, "
        "Tensor running_var, Tensor mask, float eps) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("stoch_norm_backward(Tensor grad_y, Tensor x, Tensor? weight, Tensor mask, "
        "Tensor save_mean, Tensor save_invstd) -> (Tensor, Tensor, Tensor)");
  m.def("stoch_norm_stats(Tensor x) -> (Tensor, Tensor)");
  m.def("stoch_norm_elemt(Tensor x, Tensor? weight, Tensor? bias, Tensor save_mean, "
        "Tensor save_invstd) -> Tensor");
  m.def("stoch_norm_backward_reduce(Tensor grad_y, Tensor x, Tensor save_mean, "
        "Tensor save_invstd) -> (Tensor, Tensor)");
  m.def("stoch_norm_backward_elemt(Tensor grad_y, Tensor x, Tensor? weight, Tensor mask, "
        "Tensor save_mean, Tensor save_invstd, Tensor sum_dy, Tensor sum_dy_xhat, int count) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(tltorch_ext_C, CPU, m) {
  m.impl("stoch_norm_forward", &stoch_norm_forward_cpu);
  m.impl("stoch_norm_backward", &stoch_norm_backward_cpu);
  m.impl("stoch_norm_stats", &stoch_norm_stats_cpu);
  m.impl("stoch_norm_elemt", &stoch_norm_elemt_cpu);
  m.impl("stoch_norm_backward_reduce", &stoch_norm_backward_reduce_cpu);
  m.impl("stoch_norm_backward_elemt", &stoch_norm_backward_elemt_cpu);
}

}  // namespace tltorch_ext
