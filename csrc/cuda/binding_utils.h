// What the per-op CUDA bindings (csrc/cuda/<op>_binding.cpp) share: the only CUDA files that
// include torch. Each checks its tensors, takes the current stream and calls the torch-free
// launchers of its .cuh header.
#pragma once
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include "dtype.cuh"
#include "tile_products.cuh"

namespace tltorch_ext::binding {

// The CUDA type of a torch scalar type (same layout).
template <typename T>
struct CudaType {
  using type = T;
};
template <>
struct CudaType<at::Half> {
  using type = __half;
};
template <>
struct CudaType<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
auto* cuda_ptr(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<typename CudaType<T>::type*>(t.data_ptr<T>()) : nullptr;
}

inline cuda::DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return cuda::DType::kHalf;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    case at::kFloat: return cuda::DType::kFloat;
    case at::kDouble: return cuda::DType::kDouble;
    default: break;
  }
  TORCH_CHECK(false, "expected a float16, bfloat16, float32 or float64 tensor, got ", t);
}

inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got ", t.device());
}

// (B, C, L) feature maps of any strides, as the FSP and NST kernels read them.
inline cuda::FeatureMaps feature_maps(const at::Tensor& t, const char* name) {
  check_cuda(t, name);
  TORCH_CHECK(t.dim() == 3, name, " must be (B, C, HW), got shape ", t.sizes());
  cuda::FeatureMaps maps;
  maps.data = t.data_ptr();
  maps.dtype = dtype_of(t.scalar_type());
  maps.batch_stride = t.stride(0);
  maps.channel_stride = t.stride(1);
  maps.position_stride = t.stride(2);
  maps.channels = t.size(1);
  maps.positions = t.size(2);
  return maps;
}

inline at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

inline void check(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, what, " failed: ", cudaGetErrorString(status));
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace tltorch_ext::binding
