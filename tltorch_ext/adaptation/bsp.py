"""Batch Spectral Penalization (BSP, Chen et al., 2019): adversarial adaptation lets a few
directions with the largest singular values dominate the features, at the cost of
discriminability; BSP penalizes those largest singular values of each domain's feature batch."""
import torch
from torch import nn

from .._tensors import check_floating, check_nonempty_batch, positive_int, stat_dtype

__all__ = ["BatchSpectralPenalization"]


class BatchSpectralPenalization(nn.Module):
    """L = Σ_{i=1..k} (σ_{s,i}² + σ_{t,i}²): the k largest singular values σ_1 ≥ σ_2 ≥ … of the
    source feature matrix F_s (N_s × d) and of the target one F_t (N_t × d), squared and summed.

    Its gradient with respect to F is 2 Σ_{i≤k} σ_i u_i v_iᵀ = 2 U_k U_kᵀ F, well defined when
    σ_k > σ_{k+1} (for k = min(N, d) it is 2F: L is then ||F_s||_F² + ||F_t||_F²).

    The singular values come from ``torch.linalg.svdvals`` in float32 (float64 for float64
    features), not from the library's BSS op: that op returns the k *smallest* σ² of the Gram
    matrix (:func:`tltorch_ext.ops.bss_penalty`). The largest ones could be had from it as
    ||F||_F² − bss_penalty(F, m − k), but that difference loses up to a factor m/k of relative
    accuracy to cancellation and solves for m − k eigenvectors instead of k; the largest singular
    values are also the ones the SVD gets most accurately, so the direct computation is used.

    Returned in float32 for float16/bfloat16 features (σ² overflows float16 quickly), else in the
    features' dtype.

    Args:
        k: how many of the largest singular values, k ≥ 1 (and ≤ min(N, d) of each domain's
            batch, checked at forward).

    ``forward(f_s, f_t)``: source and target features, (N_s, d) and (N_t, d), on one device.
    """

    def __init__(self, k: int = 1):
        super().__init__()
        self.k = positive_int("k", k)

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        for name, f in (("f_s", f_s), ("f_t", f_t)):
            check_nonempty_batch(name, check_floating(name, f, ndim=2))
            if self.k > min(f.shape):
                raise ValueError(
                    f"k must satisfy k <= min(N, d) = {min(f.shape)} for {name} of shape "
                    f"{tuple(f.shape)}, got k={self.k}"
                )
        if f_s.shape[1] != f_t.shape[1] or f_s.device != f_t.device:
            raise ValueError(
                f"f_s and f_t must share the feature dimension and device, got "
                f"{tuple(f_s.shape)} on {f_s.device} and {tuple(f_t.shape)} on {f_t.device}"
            )
        penalty = 0
        for f in (f_s, f_t):
            sigma = torch.linalg.svdvals(f.to(stat_dtype(f.dtype)))    # descending
            penalty = penalty + sigma[: self.k].square().sum()
        return penalty

    def extra_repr(self) -> str:
        return f"k={self.k}"
