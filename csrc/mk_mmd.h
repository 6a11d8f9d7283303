// Multi-kernel MMD (docs/api_mmd.md): the estimate's weights and the argument checks that the CPU
// kernels (csrc/cpu/mk_mmd.cpp) and the CUDA binding (csrc/cuda/mk_mmd_binding.cpp) share. It
// uses ATen, so only those two include it; the CUDA kernels get the weights in cuda::MmdProblem.
//
// Rows 0..B-1 are the source, B..2B-1 the target. The quadratic estimates weight every ordered
// pair i != j, W_ij = same (both rows in one domain) or cross; the biased one adds the diagonal,
// whose kernel value is exactly the product of the layers' kernel counts, as a constant. The
// linear estimate has, for each i and i' = (i + 1) mod B, the pairs (s_i, s_i'), (t_i, t_i')
// weighted 1/B and (s_i, t_i'), (s_i', t_i) weighted `cross` (-1/B; -1/(2B) at B = 2, where
// TLlib's matrix sets the same two cross entries for i = 0 and i = 1).
#pragma once
#include <ATen/core/Tensor.h>

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

// What the checks establish: rows, batch B, the estimate and its weights, and Σ kernels (the
// number of bandwidths gammas must hold).
struct Problem {
  int64_t n, batch;
  Estimate estimate;
  Weights weights;
  int64_t kernel_total;
};

// The checks both devices make alike, with check_layer(l, features[l], centers[l], features[0])
// checking a layer's tensors where they live (its messages name the device) against the first
// layer, before its kernel count is checked. The caller checks gammas against kernel_total.
template <typename CheckLayer>
Problem check_problem(at::TensorList features, at::TensorList centers, at::IntArrayRef kernels,
                      const std::string& estimate, const CheckLayer& check_layer) {
  TORCH_CHECK(!features.empty(), "mk_mmd: features must hold at least one layer");
  TORCH_CHECK(centers.size() == features.size() && kernels.size() == features.size(),
              "mk_mmd: one centre and one kernel count per layer, got ", features.size(),
              " layers, ", centers.size(), " centres, ", kernels.size(), " counts");
  const int code = parse_estimate(estimate);
  TORCH_CHECK(code >= 0, "mk_mmd: estimate must be biased, unbiased or linear, got ", estimate);
  const int64_t n = features[0].size(0);
  TORCH_CHECK(n >= 4 && n % 2 == 0, "mk_mmd: features must stack 2B rows, B >= 2, got ", n);
  int64_t total = 0;
  double product = 1;
  for (size_t l = 0; l < features.size(); ++l) {
    check_layer(l, features[l], centers[l], features[0]);
    TORCH_CHECK(kernels[l] >= 1, "mk_mmd: every layer needs at least one kernel");
    total += kernels[l];
    product *= static_cast<double>(kernels[l]);
  }
  const auto e = static_cast<Estimate>(code);
  return {n, n / 2, e, weights(n / 2, e, product), total};
}

}  // namespace tltorch_ext::mmd
