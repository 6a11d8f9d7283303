"""Batch Spectral Shrinkage (docs/api_bss.md): a fine-tuning regularizer that penalizes the smallest
singular values of the batch's feature matrix, the directions least transferable from the source
task. The fused op lives in :mod:`tltorch_ext.ops.bss`.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..ops.bss import bss_penalty


class BatchSpectralShrinkage(nn.Module):
    """forward(feature) = Σ_{i=1..k} σ²_(i): the k smallest of the min(b, d) singular values of
    the feature matrix (b, d), squared; a batch of matrices (n, b, d) gives n penalties.

    Typical use: ``loss = task_loss + trade_off * bss(features)`` with the backbone's pooled
    features. The module has no parameters or state; see :func:`tltorch_ext.ops.bss_penalty` for
    the method, its accuracy and repeated singular values.

    Args:
        k: how many of the smallest singular values to shrink, k ≥ 1 (and ≤ min(b, d) of each
            input, checked at forward).
    """

    def __init__(self, k: int = 1):
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k

    def extra_repr(self) -> str:
        return f"k={self.k}"

    def forward(self, feature: Tensor) -> Tensor:
        return bss_penalty(feature, self.k)
