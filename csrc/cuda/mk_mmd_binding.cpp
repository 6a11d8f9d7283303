// The multi-kernel MMD's CUDA kernels (mk_mmd.cu) as tltorch_ext_C::mk_mmd_* for CUDA tensors;
// the schemas and CPU kernels are in csrc/cpu/mk_mmd.cpp. The binding packs every layer's
// centred rows and their squared norms with ATen (one copy of the input, as the CPU kernels do),
// then calls the launchers.
#include <string>
#include <vector>

#include "../mk_mmd.h"
#include "binding_utils.h"
#include "mk_mmd.cuh"

namespace tltorch_ext {
namespace {

using binding::check;
using binding::current_stream;

struct Packed {
  at::Tensor zc, q, column_offsets, kernel_offsets, gammas;
  std::vector<int64_t> dims;
  mmd::Estimate estimate;
  mmd::Weights weights;
  cuda::MmdProblem problem;
};

Packed pack(at::TensorList features, at::TensorList centers, const at::Tensor& gammas,
            at::IntArrayRef kernels, const std::string& estimate) {
  TORCH_CHECK(!features.empty() && centers.size() == features.size() &&
                  kernels.size() == features.size(),
              "mk_mmd: one centre and one kernel count per layer, got ", features.size(),
              " layers, ", centers.size(), " centres, ", kernels.size(), " counts");
  const int code = mmd::parse_estimate(estimate);
  TORCH_CHECK(code >= 0, "mk_mmd: estimate must be biased, unbiased or linear, got ", estimate);
  const at::Tensor& first = features[0];
  const int64_t n = first.size(0);
  TORCH_CHECK(n >= 4 && n % 2 == 0, "mk_mmd: features must stack 2B rows, B >= 2, got ", n);
  const auto acc = at::toOpMathType(first.scalar_type());
  Packed out;
  std::vector<at::Tensor> parts;
  std::vector<int> columns{0}, kernel_starts{0};
  double product = 1;
  for (size_t l = 0; l < features.size(); ++l) {
    const at::Tensor& z = features[l];
    binding::check_cuda(z, "features");
    TORCH_CHECK(z.dim() == 2 && z.size(0) == n && z.scalar_type() == first.scalar_type() &&
                    z.device() == first.device(),
                "mk_mmd: features must be (", n, ", d) tensors of one dtype and device, got ",
                z.sizes(), " ", z.scalar_type());
    TORCH_CHECK(centers[l].numel() == z.size(1) && centers[l].device() == z.device(),
                "mk_mmd: centers[", l, "] must hold ", z.size(1), " values on ", z.device());
    TORCH_CHECK(kernels[l] >= 1, "mk_mmd: every layer needs at least one kernel");
    parts.push_back(z.to(acc) - centers[l].to(acc));
    out.dims.push_back(z.size(1));
    columns.push_back(columns.back() + static_cast<int>(z.size(1)));
    kernel_starts.push_back(kernel_starts.back() + static_cast<int>(kernels[l]));
    product *= static_cast<double>(kernels[l]);
  }
  TORCH_CHECK(gammas.dim() == 1 && gammas.numel() == kernel_starts.back(),
              "mk_mmd: gammas must hold ", kernel_starts.back(), " values");
  const auto int_options = first.options().dtype(at::kInt);
  out.zc = at::cat(parts, 1).contiguous();
  std::vector<at::Tensor> norms;
  for (const auto& part : out.zc.split_with_sizes(out.dims, 1)) {
    norms.push_back(part.square().sum(1));
  }
  out.q = at::stack(norms).contiguous();
  out.column_offsets = at::tensor(columns, at::kInt).to(int_options.device());
  out.kernel_offsets = at::tensor(kernel_starts, at::kInt).to(int_options.device());
  out.gammas = gammas.to(first.device(), at::kDouble).contiguous();
  out.estimate = static_cast<mmd::Estimate>(code);
  out.weights = mmd::weights(n / 2, out.estimate, product);
  cuda::MmdProblem& p = out.problem;
  p.zc = out.zc.data_ptr();
  p.q = out.q.data_ptr();
  p.column_offsets = out.column_offsets.data_ptr<int>();
  p.kernel_offsets = out.kernel_offsets.data_ptr<int>();
  p.gammas = out.gammas.data_ptr<double>();
  p.n = n;
  p.batch = n / 2;
  p.stride = out.zc.size(1);
  p.layers = static_cast<int>(features.size());
  p.double_acc = acc == at::kDouble;
  p.linear = out.estimate == mmd::Estimate::kLinear;
  p.same = out.weights.same;
  p.cross = out.weights.cross;
  return out;
}

at::Tensor mk_mmd_forward_cuda(at::TensorList features, at::TensorList centers,
                               const at::Tensor& gammas, at::IntArrayRef kernels,
                               c10::string_view estimate) {
  TORCH_CHECK(!features.empty(), "mk_mmd: features must hold at least one layer");
  const c10::cuda::CUDAGuard guard(features[0].device());
  const Packed packed = pack(features, centers, gammas, kernels, std::string(estimate));
  at::Tensor partial = at::empty({cuda::mk_mmd_forward_partials(packed.problem)},
                                 features[0].options().dtype(at::kDouble));
  check(cuda::mk_mmd_forward(packed.problem, partial.data_ptr<double>(), current_stream()),
        "mk_mmd_forward");
  return (partial.sum() + packed.weights.diagonal).to(features[0].scalar_type());
}

std::vector<at::Tensor> mk_mmd_backward_cuda(const at::Tensor& grad, at::TensorList features,
                                             at::TensorList centers, const at::Tensor& gammas,
                                             at::IntArrayRef kernels,
                                             c10::string_view estimate) {
  TORCH_CHECK(!features.empty(), "mk_mmd: features must hold at least one layer");
  const c10::cuda::CUDAGuard guard(features[0].device());
  const Packed packed = pack(features, centers, gammas, kernels, std::string(estimate));
  const at::Tensor scale = grad.to(packed.zc.options()).reshape({1}).contiguous();
  at::Tensor out = at::zeros_like(packed.zc);
  check(cuda::mk_mmd_backward(packed.problem, scale.data_ptr(), out.data_ptr(), current_stream()),
        "mk_mmd_backward");
  std::vector<at::Tensor> grads;
  for (const auto& part : out.split_with_sizes(packed.dims, 1)) {
    grads.push_back(part.to(features[0].scalar_type()).contiguous());
  }
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(tltorch_ext_C, CUDA, m) {
  m.impl("mk_mmd_forward", &mk_mmd_forward_cuda);
  m.impl("mk_mmd_backward", &mk_mmd_backward_cuda);
}

}  // namespace tltorch_ext
