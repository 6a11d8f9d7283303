// Multi-kernel MMD (docs/api_mmd.md): the estimate's weights, shared by the CPU kernels
// (csrc/cpu/mk_mmd.cpp) and the CUDA ones (csrc/cuda/mk_mmd.cu). Torch-free.
//
// Rows 0..B-1 are the source, B..2B-1 the target. The quadratic estimates weight every ordered
// pair i != j, W_ij = same (both rows in one domain) or cross; the biased one adds the diagonal,
// whose kernel value is exactly the product of the layers' kernel counts, as a constant. The
// linear estimate has, for each i and i' = (i + 1) mod B, the pairs (s_i, s_i'), (t_i, t_i')
// weighted 1/B and (s_i, t_i'), (s_i', t_i) weighted `cross` (-1/B; -1/(2B) at B = 2, where
// TLlib's matrix sets the same two cross entries for i = 0 and i = 1).
#pragma once

#include <cstdint>
#include <string>

namespace tltorch_ext::mmd {

enum class Estimate : int { kBiased = 0, kUnbiased = 1, kLinear = 2 };

// -1 for an unknown name.
inline int parse_estimate(const std::string& name) {
  if (name == "biased") return static_cast<int>(Estimate::kBiased);
  if (name == "unbiased") return static_cast<int>(Estimate::kUnbiased);
  if (name == "linear") return static_cast<int>(Estimate::kLinear);
  return -1;
}

struct Weights {
  double same;      // quadratic: a same-domain pair; linear: a same-domain neighbour pair
  double cross;     // a source-target pair
  double diagonal;  // the constant the diagonal adds (biased only)
};

// kernel_product: Π over layers of their kernel counts (K_ii).
inline Weights weights(int64_t batch, Estimate estimate, double kernel_product) {
  const double b = static_cast<double>(batch);
  switch (estimate) {
    case Estimate::kBiased: return {1.0 / (b * b), -1.0 / (b * b), 2.0 * kernel_product / b};
    case Estimate::kUnbiased: return {1.0 / (b * (b - 1.0)), -1.0 / (b * b), 0.0};
    default: return {1.0 / b, batch == 2 ? -0.5 / b : -1.0 / b, 0.0};
  }
}

}  // namespace tltorch_ext::mmd
