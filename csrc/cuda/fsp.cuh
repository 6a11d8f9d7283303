// FSP on CUDA (docs/api_fsp_nst.md), torch-free launchers; the torch wrappers are in
// fsp_binding.cpp.
// Maps are (B, C, HW) of any strides and floating type; accumulation is float (double for double
// maps). Every launcher returns the first CUDA error it meets.
#pragma once

#include "tile_products.cuh"

namespace tltorch_ext::cuda {

// G = top · botᵀ / HW into out, (B, C_top, C_bot) contiguous in top's dtype.
cudaError_t fsp_matrix(const FeatureMaps& bot, const FeatureMaps& top, int64_t batch, void* out,
                       cudaStream_t stream);

// Workspace bytes fsp_loss needs.
size_t fsp_loss_workspace(int64_t batch, int64_t c_top, int64_t c_bot, bool double_acc);

// loss = mean((G_s − G_t)²) (a scalar in the maps' dtype); each tile of G_s and G_t is accumulated
// and subtracted in registers, only its Σ of squares stored. diff (null: not written) receives
// D = G_s − G_t, (B, C_top, C_bot) contiguous in the accumulation type.
cudaError_t fsp_loss(const FeatureMaps& bot_s, const FeatureMaps& top_s,
                     const FeatureMaps& bot_t, const FeatureMaps& top_t, int64_t batch,
                     void* loss, void* diff, void* workspace, cudaStream_t stream);

// out (B, R, L) = alpha · grad · op(M) · X in x's dtype, contiguous: M (B, R, J) contiguous, or
// (B, J, R) with transpose_m; X the maps (B, J, L); grad an accumulation-type scalar or null.
cudaError_t fsp_apply(const void* m, DType m_dtype, bool transpose_m, int64_t rows,
                      const FeatureMaps& x, int64_t batch, double alpha, const void* grad,
                      void* out, cudaStream_t stream);

}  // namespace tltorch_ext::cuda
