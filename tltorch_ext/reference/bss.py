"""Plain-PyTorch Batch Spectral Shrinkage (docs/api_bss.md): the oracle and the fallback backend.

For one feature matrix F (b × d) with singular values σ_1 ≥ … ≥ σ_m (m = min(b, d)), the penalty
is Σ_{i > m − k} σ_i², the k smallest squared. This backend takes them from a full SVD
(torch.linalg.svd), in float32 (float64 for float64 input). Its gradient is
2 Σ_i σ_i u_i v_iᵀ over the same k triplets, which equals 2 U_k U_kᵀ F with the left singular
vectors U_k (b ≤ d) or 2 F V_k V_kᵀ with the right ones V_k (b > d): whichever of the two has the
shorter side is what forward returns for backward.

Both functions work on a batch (n, b, d); the op layer adds and removes that dimension.
"""
from __future__ import annotations

import torch

from .._tensors import stat_dtype


def forward(feature: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(penalty (n,) in feature's dtype, vectors (n, m, k)).

    vectors holds the singular vectors of the k smallest singular values, smallest first: the
    left ones (m = b) when b ≤ d, else the right ones (m = d), in float32 (float64 for float64
    input). A matrix with a non-finite entry gets NaN penalty and vectors (the SVD would refuse it).
    """
    acc = stat_dtype(feature.dtype)
    x = feature.to(acc)
    rows, cols = x.shape[-2:]
    finite = torch.isfinite(x).flatten(1).all(1)
    x = torch.where(finite[:, None, None], x, 0)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    penalty = (s[:, -k:] ** 2).sum(-1)
    vectors = (u if rows <= cols else vh.mT)[..., -k:].flip(-1)
    nan = torch.full((), float("nan"), dtype=acc, device=x.device)
    penalty = torch.where(finite, penalty, nan)
    vectors = torch.where(finite[:, None, None], vectors, nan)
    return penalty.to(feature.dtype), vectors.contiguous()


def backward(grad_penalty: torch.Tensor, feature: torch.Tensor,
             vectors: torch.Tensor) -> torch.Tensor:
    """∂(g·penalty)/∂F = 2 g U_k U_kᵀ F (b ≤ d) or 2 g F V_k V_kᵀ (b > d), in feature's dtype."""
    acc = vectors.dtype
    x = feature.to(acc)
    scale = 2 * grad_penalty.to(acc)[:, None, None]
    if x.shape[-2] <= x.shape[-1]:
        grad = vectors @ (vectors.mT @ x)
    else:
        grad = (x @ vectors) @ vectors.mT
    return (scale * grad).to(feature.dtype)
