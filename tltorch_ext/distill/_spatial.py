"""Spatial matching of two feature maps before a distillation op (FSP, NST)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._tensors import check_floating


def check_map(name: str, t) -> None:
    check_floating(name, t)
    if t.dim() != 4:
        raise ValueError(f"{name} must be a (B, C, H, W) feature map, got shape {tuple(t.shape)}")


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool (adaptively) whichever of two (B, C, H, W) maps is larger to the smaller
    spatial size: both come out at (min(H_a, H_b), min(W_a, W_b)); non-square maps work."""
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    return tuple(t if tuple(t.shape[2:]) == size else F.adaptive_avg_pool2d(t, size)
                 for t in (a, b))
