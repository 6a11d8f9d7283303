// BSS's CUDA kernels (bss.cu) as tltorch_ext_C::bss_* for CUDA tensors; the schemas, CPU kernels
// and the eigh fallback are in csrc/cpu/bss.cpp.
#include "binding_utils.h"
#include "bss.cuh"
#include "bss.h"

namespace tltorch_ext {
namespace {

using binding::dtype_of;

// The Gram side A of a contiguous (n, b, d) feature: F (m = b) when b <= d, else Fᵀ (m = d).
struct BssSide {
  int64_t m, length;
  bss::Strided a;
};

BssSide bss_side(const at::Tensor& feature) {
  const int64_t b = feature.size(1), d = feature.size(2);
  if (b <= d) return {b, d, {b * d, d, 1}};
  return {d, b, {b * d, 1, d}};
}

std::tuple<at::Tensor, at::Tensor> bss_forward_cuda(const at::Tensor& feature_, int64_t k) {
  bss_check_forward(feature_, k);
  TORCH_CHECK(feature_.is_cuda(), "bss_forward_cuda: feature must be a CUDA tensor, got ",
              feature_.device());
  const c10::cuda::CUDAGuard guard(feature_.device());
  const at::Tensor feature = feature_.contiguous();
  const BssSide side = bss_side(feature);
  const int64_t batch = feature.size(0);
  const at::ScalarType dtype = feature.scalar_type(), acc = at::toOpMathType(dtype);
  const auto float64 = feature.options().dtype(at::kDouble);
  at::Tensor penalty = at::empty({batch}, feature.options());
  at::Tensor vectors = at::empty({batch, side.m, k}, feature.options().dtype(acc));
  if (batch == 0) return {penalty, vectors};
  const cudaStream_t stream = binding::current_stream();
  at::Tensor gram = at::empty({batch, side.m, side.m}, float64);
  C10_CUDA_CHECK(bss::launch_gram(feature.const_data_ptr(), dtype_of(dtype), side.a, batch, side.m,
                                  side.length, gram.mutable_data_ptr<double>(), stream));
  if (side.m > bss::kMaxJacobi) return bss_smallest_by_eigh(gram, k, dtype, acc);
  bool in_shared = false;
  C10_CUDA_CHECK(bss::jacobi_packs_in_shared(side.m, &in_shared));
  at::Tensor log = at::empty({batch, bss::jacobi_log_elements(side.m)}, float64);
  at::Tensor packed =
      in_shared ? at::Tensor() : at::empty({batch, bss::jacobi_packed_elements(side.m)}, float64);
  C10_CUDA_CHECK(bss::launch_jacobi(
      gram.const_data_ptr<double>(), batch, side.m, k, log.mutable_data_ptr<double>(),
      in_shared ? nullptr : packed.mutable_data_ptr<double>(), penalty.mutable_data_ptr(),
      dtype_of(dtype), vectors.mutable_data_ptr(), dtype_of(acc), stream));
  return {penalty, vectors};
}

at::Tensor bss_backward_cuda(const at::Tensor& grad_penalty, const at::Tensor& feature_,
                             const at::Tensor& vectors_) {
  bss_check_backward(grad_penalty, feature_, vectors_);
  TORCH_CHECK(feature_.is_cuda(), "bss_backward_cuda: feature must be a CUDA tensor, got ",
              feature_.device());
  const c10::cuda::CUDAGuard guard(feature_.device());
  const at::Tensor feature = feature_.contiguous();
  const at::Tensor vectors = vectors_.contiguous();
  const BssSide side = bss_side(feature);
  const int64_t batch = feature.size(0), k = vectors.size(2);
  at::Tensor grad = at::empty_like(feature);
  if (grad.numel() == 0) return grad;
  const at::Tensor scale = (grad_penalty * 2).to(vectors.scalar_type()).contiguous();
  at::Tensor workspace = at::empty({batch, k, side.length}, vectors.options());
  C10_CUDA_CHECK(bss::launch_backward(
      feature.const_data_ptr(), dtype_of(feature.scalar_type()), side.a, batch, side.m,
      side.length, vectors.const_data_ptr(), k, scale.const_data_ptr(),
      workspace.mutable_data_ptr(), grad.mutable_data_ptr(), binding::current_stream()));
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(tltorch_ext_C, CUDA, m) {
  m.impl("bss_forward", &bss_forward_cuda);
  m.impl("bss_backward", &bss_backward_cuda);
}

}  // namespace tltorch_ext
