// Feature-map rows for the FSP and NST CPU kernels: per-thread scratch, row norms and packing of
// one sample's (C, HW) rows (any strides, any floating type) into accumulation-type panels.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace tltorch_ext {

// Per-thread work space allocated through torch (so it shows in torch's memory accounting): one
// slice of `per_thread` values for each thread at::parallel_for may use (none when 0).
template <typename acc_t>
class ThreadScratch {
 public:
  ThreadScratch(int64_t per_thread, const at::Tensor& like)
      : per_thread_(per_thread),
        buffer_(at::empty({at::get_num_threads() * per_thread},
                          like.options().dtype(c10::CppTypeToScalarType<acc_t>::value))) {}

  acc_t* local() const {
    return per_thread_ == 0 ? nullptr
                            : buffer_.data_ptr<acc_t>() + at::get_thread_num() * per_thread_;
  }

 private:
  int64_t per_thread_;
  at::Tensor buffer_;
};

// A (B, C, L) tensor's sample b, rows first..first+count, as a base pointer and strides.
template <typename scalar_t>
struct SampleRows {
  const scalar_t* ptr;
  int64_t row_stride;
  int64_t col_stride;
  int64_t len;

  SampleRows(const at::Tensor& t, int64_t b, int64_t first = 0)
      : ptr(t.data_ptr<scalar_t>() + b * t.stride(0) + first * t.stride(1)),
        row_stride(t.stride(1)),
        col_stride(t.stride(2)),
        len(t.size(2)) {}

  const scalar_t* row(int64_t i) const { return ptr + i * row_stride; }
};

// ‖row i‖₂, accumulated in acc_t.
template <typename acc_t, typename scalar_t>
acc_t row_norm(const SampleRows<scalar_t>& rows, int64_t i) {
  const scalar_t* src = rows.row(i);
  const int64_t stride = rows.col_stride;
  acc_t squares = 0;
#pragma omp simd reduction(+ : squares)
  for (int64_t k = 0; k < rows.len; ++k) {
    const acc_t v = static_cast<acc_t>(src[k * stride]);
    squares += v * v;
  }
  return std::sqrt(squares);
}

// dst = diag(scale) · rows (count × len, leading dimension len), or its transpose
// (len × count, leading dimension count); scale null means 1.
template <typename acc_t, typename scalar_t>
void pack_rows(const SampleRows<scalar_t>& rows, int64_t count, const acc_t* scale,
               bool transpose, acc_t* dst) {
  for (int64_t i = 0; i < count; ++i) {
    const scalar_t* src = rows.row(i);
    const acc_t s = scale == nullptr ? acc_t(1) : scale[i];
    const int64_t stride = rows.col_stride;
    if (transpose) {
      for (int64_t k = 0; k < rows.len; ++k) {
        dst[k * count + i] = s * static_cast<acc_t>(src[k * stride]);
      }
    } else {
      acc_t* out = dst + i * rows.len;
#pragma omp simd
      for (int64_t k = 0; k < rows.len; ++k) out[k] = s * static_cast<acc_t>(src[k * stride]);
    }
  }
}

// Whether panel() below has to copy: unless the maps are acc_t with unit stride along the
// panel's rows.
template <typename acc_t, typename scalar_t>
bool needs_packing(int64_t row_stride, int64_t col_stride, bool transpose) {
  return !std::is_same_v<acc_t, scalar_t> || (transpose ? row_stride : col_stride) != 1;
}

// Scratch values panel() takes for `count` rows of the (B, C, L) maps t.
template <typename acc_t, typename scalar_t>
int64_t panel_size(const at::Tensor& t, int64_t count, bool transpose) {
  return needs_packing<acc_t, scalar_t>(t.stride(1), t.stride(2), transpose) ? count * t.size(2)
                                                                               : 0;
}

// Rows (count × len), or their transpose (len × count), as an acc_t panel with contiguous rows:
// the input itself when it already is one, else a copy packed into `scratch`, which then advances
// past it.
template <typename acc_t, typename scalar_t>
const acc_t* panel(const SampleRows<scalar_t>& rows, int64_t count, bool transpose,
                   acc_t*& scratch, int64_t& ld) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    if (!needs_packing<acc_t, scalar_t>(rows.row_stride, rows.col_stride, transpose)) {
      ld = transpose ? rows.col_stride : rows.row_stride;
      return rows.ptr;
    }
  }
  acc_t* out = scratch;
  pack_rows<acc_t>(rows, count, nullptr, transpose, out);
  scratch += count * rows.len;
  ld = transpose ? count : rows.len;
  return out;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Tasks per parallel chunk, so that a chunk holds at least ~2^18 multiply-adds: small problems stay
// on one thread, where waking the pool would cost more than the work.
inline int64_t grain_for(int64_t work_per_task) {
  constexpr int64_t kMinChunkWork = int64_t(1) << 18;
  return std::max<int64_t>(1, kMinChunkWork / std::max<int64_t>(work_per_task, 1));
}

}  // namespace tltorch_ext
