// Device helpers shared by the FSP/NST kernels (.cu files only): typed loads and stores through
// the DType tag, converting to and from the accumulation type, and a warp sum.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "tile_products.cuh"

namespace tltorch_ext::cuda {

template <typename acc_t>
__device__ __forceinline__ acc_t load_value(const void* base, DType dtype, int64_t offset) {
  switch (dtype) {
    case DType::kHalf:
      return static_cast<acc_t>(__half2float(static_cast<const __half*>(base)[offset]));
    case DType::kBFloat16:
      return static_cast<acc_t>(
          __bfloat162float(static_cast<const __nv_bfloat16*>(base)[offset]));
    case DType::kFloat:
      return static_cast<acc_t>(static_cast<const float*>(base)[offset]);
    default:
      return static_cast<acc_t>(static_cast<const double*>(base)[offset]);
  }
}

template <typename acc_t>
__device__ __forceinline__ void store_value(void* base, DType dtype, int64_t offset, acc_t v) {
  switch (dtype) {
    case DType::kHalf:
      static_cast<__half*>(base)[offset] = __float2half_rn(static_cast<float>(v));
      break;
    case DType::kBFloat16:
      static_cast<__nv_bfloat16*>(base)[offset] = __float2bfloat16_rn(static_cast<float>(v));
      break;
    case DType::kFloat:
      static_cast<float*>(base)[offset] = static_cast<float>(v);
      break;
    default:
      static_cast<double*>(base)[offset] = static_cast<double>(v);
  }
}

// The sum over the 32 lanes of a warp, in every lane.
template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t value) {
  for (int offset = 16; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  return value;
}

}  // namespace tltorch_ext::cuda
