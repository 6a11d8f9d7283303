// Multi-kernel MMD on CUDA (docs/api_mmd.md), torch-free launchers; the torch wrappers are in
// mk_mmd_binding.cpp, the weights in csrc/mk_mmd.h. Every launcher returns the first CUDA error
// it meets.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace tltorch_ext::cuda {

// Every layer's centred rows zc = z − c side by side, (n, stride) contiguous in the accumulation
// type (float; double when double_acc), with their squared norms q (layers, n); layer l holds
// columns column_offsets[l] .. column_offsets[l + 1] and kernels kernel_offsets[l] ..
// kernel_offsets[l + 1] of gammas (γ = 1/(2σ²), float64). The offsets and gammas live on the
// device; same and cross are the weights of csrc/mk_mmd.h.
struct MmdProblem {
  const void* zc = nullptr;
  const void* q = nullptr;
  const int* column_offsets = nullptr;
  const int* kernel_offsets = nullptr;
  const double* gammas = nullptr;
  int64_t n = 0, batch = 0, stride = 0;
  int layers = 0;
  bool double_acc = false;
  bool linear = false;
  double same = 0, cross = 0;
};

// Size of the partial-sum vector (float64) mk_mmd_forward writes.
int64_t mk_mmd_forward_partials(const MmdProblem& p);

// partial[k] (float64): Σ W_ij K_ij over the pairs of block k (the quadratic estimates visit the
// tiles on and above the diagonal, doubling those above; the linear one its 4B pairs). The loss
// is their sum plus the biased estimate's diagonal constant. Nothing of size n² is stored.
cudaError_t mk_mmd_forward(const MmdProblem& p, double* partial, cudaStream_t stream);

// out (n, stride), accumulation type: 2g (rowsum(A^l) zc − A^l zc) per layer's columns, with
// A^l = (W + Wᵀ) ∘ ∂K/∂d^l recomputed tile by tile; grad (g) an accumulation-type scalar on the
// device. out must be zeroed (the quadratic kernel accumulates into it).
cudaError_t mk_mmd_backward(const MmdProblem& p, const void* grad, void* out,
                            cudaStream_t stream);

}  // namespace tltorch_ext::cuda
