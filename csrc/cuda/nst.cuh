// NST on CUDA (docs/api_fsp_nst.md), torch-free launchers; the torch wrappers are in
// nst_binding.cpp.
// f_s (B, C_s, L) and f_t (B, C_t, L) of any strides and floating type; norms (B, C) contiguous
// in the accumulation type (float, double for double maps). Every launcher returns the first CUDA
// error it meets.
#pragma once

#include "tile_products.cuh"

namespace tltorch_ext::cuda {

size_t nst_forward_workspace(int64_t batch, int64_t c_s, int64_t c_t, int64_t len, bool spatial,
                             bool double_acc);

// Row norms of both maps, then the loss (a scalar in the maps' dtype) from per-tile sums of
// squares: spatial, of SᵀS/C_s − TᵀT/C_t (upper triangle); channel, of T Tᵀ/C_t, S Sᵀ/C_s (upper
// triangles) and S Tᵀ/√(C_s C_t), combined as tt + ss − 2 st. The normalization happens as the
// tiles load.
cudaError_t nst_forward(const FeatureMaps& f_s, const FeatureMaps& f_t, int64_t batch,
                        bool spatial, void* loss, void* norm_s, void* norm_t, void* workspace,
                        cudaStream_t stream);

size_t nst_backward_workspace(int64_t batch, int64_t c_s, int64_t c_t, int64_t len, bool spatial,
                              bool need_s, bool need_t, bool double_acc);

// Input gradients (B, C, L) contiguous in the maps' dtype, for those needed (the others may be
// null); grad is the upstream gradient, an accumulation-type scalar. Recomputes per sample the
// Grams it applies (E and P_s, or S Sᵀ and S Tᵀ) in the workspace, then the normalization's
// gradient row by row.
cudaError_t nst_backward(const FeatureMaps& f_s, const FeatureMaps& f_t, int64_t batch,
                         const void* norm_s, const void* norm_t, bool spatial, const void* grad,
                         void* grad_s, void* grad_t, void* workspace, cudaStream_t stream);

}  // namespace tltorch_ext::cuda
