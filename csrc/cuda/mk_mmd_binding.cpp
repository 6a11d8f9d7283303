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
  mmd::Problem checked;  // sizes, estimate and weights, as the shared checks found them
  cuda::MmdProblem problem;
};

Packed pack(at::TensorList features, at::TensorList centers, const at::Tensor& gammas,
            at::IntArrayRef kernels, const std::string& estimate) {
  Packed out;
  out.checked = mmd::check_problem(
      features, centers, kernels, estimate,
      [](size_t l, const at::Tensor& z, const at::Tensor& center, const at::Tensor& first) {
        binding::check_cuda(z, "features");
        TORCH_CHECK(z.dim() == 2 && z.size(0) == first.size(0) &&
                        z.scalar_type() == first.scalar_type() && z.device() == first.device(),
                    "mk_mmd: features must be (", first.size(0),
                    ", d) tensors of one dtype and device, got ", z.sizes(), " ", z.scalar_type());
        TORCH_CHECK(center.numel() == z.size(1) && center.device() == z.device(),
                    "mk_mmd: centers[", l, "] must hold ", z.size(1), " values on ", z.device());
      });
  const mmd::Problem& checked = out.checked;
  TORCH_CHECK(gammas.dim() == 1 && gammas.numel() == checked.kernel_total,
              "mk_mmd: gammas must hold ", checked.kernel_total, " values");
  const at::Tensor& first = features[0];
  const auto acc = at::toOpMathType(first.scalar_type());
  std::vector<at::Tensor> parts;
  std::vector<int> columns{0}, kernel_starts{0};
  for (size_t l = 0; l < features.size(); ++l) {
    const at::Tensor& z = features[l];
    parts.push_back(z.to(acc) - centers[l].to(acc));
    out.dims.push_back(z.size(1));
    columns.push_back(columns.back() + static_cast<int>(z.size(1)));
    kernel_starts.push_back(kernel_starts.back() + static_cast<int>(kernels[l]));
  }
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
  cuda::MmdProblem& p = out.problem;
  p.zc = out.zc.data_ptr();
  p.q = out.q.data_ptr();
  p.column_offsets = out.column_offsets.data_ptr<int>();
  p.kernel_offsets = out.kernel_offsets.data_ptr<int>();
  p.gammas = out.gammas.data_ptr<double>();
  p.n = checked.n;
  p.batch = checked.batch;
  p.stride = out.zc.size(1);
  p.layers = static_cast<int>(features.size());
  p.double_acc = acc == at::kDouble;
  p.linear = checked.estimate == mmd::Estimate::kLinear;
  p.same = checked.weights.same;
  p.cross = checked.weights.cross;
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
  return (partial.sum() + packed.checked.weights.diagonal).to(features[0].scalar_type());
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
