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
// The loops (stoch_norm_kernels.inc) are plain C++ that gcc vectorizes, built twice: for the
// baseline x86-64 (SSE2) the extension is compiled for, and for AVX2 + FMA, which runs when ATen's
// own kernels do (at::get_cpu_capability() is AVX2 or above; ATEN_CPU_CAPABILITY=default turns
// both off). bfloat16 values are widened and rounded by integer operations on their bits, so that
// its loops vectorize as well as float32's.
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

// gcc compiles what is defined between these pragmas for AVX2 + FMA, the lambdas inside the
// kernels included; the torch and std templates they call were defined above and stay baseline.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define TLTORCH_EXT_STOCH_NORM_AVX2
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "stoch_norm_kernels.inc"
}  // namespace avx2
#pragma GCC pop_options
#endif

// Whether the AVX2 build runs: where ATen's kernels run theirs ("AVX2", "AVX512"), decided once.
bool run_avx2() {
#ifdef TLTORCH_EXT_STOCH_NORM_AVX2
  static const bool avx2 = at::get_cpu_capability().rfind("AVX", 0) == 0;
  return avx2;
#else
  return false;
#endif
}

#ifdef TLTORCH_EXT_STOCH_NORM_AVX2
#define TLTORCH_EXT_STOCH_NORM_KERNEL(call) (run_avx2() ? avx2::call : portable::call)
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

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> stoch_norm_forward_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& running_mean,
    const at::Tensor& running_var, const at::Tensor& mask, double eps) {
  check_cpu(x, "x");
  const StochNormForwardArgs a(x, weight, bias, running_mean, running_var, mask);
  const StochNormLayout& layout = a.layout;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(),
                                  "stoch_norm_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = a.input.data_ptr<scalar_t>();
    acc_t* mean = a.batch_mean.data_ptr<acc_t>();
    acc_t* var = a.batch_var.data_ptr<acc_t>();
    if (layout.channels_last) {
      batch_stats_channels_last(xp, layout, mean, var);
    } else {
      batch_stats_channels_first(xp, layout, mean, var);
    }
    // Per channel: batch or running statistics by the mask, then y = (x − μ)·γ·invstd + β.
    const bool* s = a.mask.data_ptr<bool>();
    const acc_t *wp = data_or_null<acc_t>(a.weight), *bp = data_or_null<acc_t>(a.bias);
    const acc_t* rmp = a.running_mean.data_ptr<acc_t>();
    const acc_t* rvp = a.running_var.data_ptr<acc_t>();
    acc_t* sm = a.save_mean.data_ptr<acc_t>();
    acc_t* si = a.save_invstd.data_ptr<acc_t>();
    std::vector<acc_t> scale(layout.c), shift(layout.c);
    for (int64_t c = 0; c < layout.c; ++c) {
      sm[c] = s[c] ? mean[c] : rmp[c];
      si[c] = acc_t(1) / std::sqrt((s[c] ? var[c] : rvp[c]) + static_cast<acc_t>(eps));
      scale[c] = wp ? si[c] * wp[c] : si[c];
      shift[c] = bp ? bp[c] : acc_t(0);
    }
    const ChannelCoefficients<acc_t> coefficients{sm, scale.data(), shift.data(), nullptr};
    affine_write<false>(xp, static_cast<const scalar_t*>(nullptr), a.y.data_ptr<scalar_t>(),
                        layout, coefficients);
  });
  return a.outputs();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> stoch_norm_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const at::Tensor& mask, const at::Tensor& save_mean, const at::Tensor& save_invstd) {
  check_cpu(x, "x");
  const StochNormBackwardArgs a(grad_y, x, weight, mask, save_mean, save_invstd);
  const StochNormLayout& layout = a.layout;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(),
                                  "stoch_norm_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = a.input.data_ptr<scalar_t>();
    const scalar_t* gp = a.grad_y.data_ptr<scalar_t>();
    const acc_t* mp = a.save_mean.data_ptr<acc_t>();
    const acc_t* ip = a.save_invstd.data_ptr<acc_t>();
    acc_t* sum_dy = a.grad_bias.data_ptr<acc_t>();
    acc_t* sum_dy_xhat = a.grad_weight.data_ptr<acc_t>();
    if (layout.channels_last) {
      grad_sums_channels_last(gp, xp, mp, layout, sum_dy, sum_dy_xhat);
    } else {
      grad_sums_channels_first(gp, xp, mp, layout, sum_dy, sum_dy_xhat);
    }
    // dx = γ·invstd·(dy − s·Σdy/n − x̂·s·Σdy·x̂/n), x̂ = (x − μ)·invstd, s the mask.
    const bool* s = a.mask.data_ptr<bool>();
    const acc_t* wp = data_or_null<acc_t>(a.weight);
    const acc_t count = static_cast<acc_t>(layout.n * layout.s);
    std::vector<acc_t> k_dy(layout.c), k_xmu(layout.c), k_const(layout.c);
    for (int64_t c = 0; c < layout.c; ++c) {
      sum_dy_xhat[c] *= ip[c];  // Σdy·(x − μ) → Σdy·x̂
      const acc_t gamma_invstd = (wp ? wp[c] : acc_t(1)) * ip[c];
      const acc_t per_value = s[c] ? gamma_invstd / count : acc_t(0);
      k_dy[c] = gamma_invstd;
      k_xmu[c] = -per_value * ip[c] * sum_dy_xhat[c];
      k_const[c] = -per_value * sum_dy[c];
    }
    const ChannelCoefficients<acc_t> coefficients{mp, k_xmu.data(), k_const.data(), k_dy.data()};
    affine_write<true>(xp, gp, a.grad_x.data_ptr<scalar_t>(), layout, coefficients);
  });
  return a.outputs();
}

// The schemas are defined here, with the CPU kernels; csrc/cuda/stoch_norm_binding.cpp adds
// CUDA ones.
TORCH_LIBRARY_FRAGMENT(tltorch_ext_C, m) {
  m.def("stoch_norm_forward(Tensor x, Tensor? weight, Tensor? bias, Tensor running_mean, "
        "Tensor running_var, Tensor mask, float eps) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("stoch_norm_backward(Tensor grad_y, Tensor x, Tensor? weight, Tensor mask, "
        "Tensor save_mean, Tensor save_invstd) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(tltorch_ext_C, CPU, m) {
  m.impl("stoch_norm_forward", &stoch_norm_forward_cpu);
  m.impl("stoch_norm_backward", &stoch_norm_backward_cpu);
}

}  // namespace tltorch_ext
