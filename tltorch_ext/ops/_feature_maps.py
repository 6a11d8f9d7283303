"""Argument checks shared by the feature-map ops (FSP, NST): maps are (B, C, H, W) or (B, C, HW)."""
from __future__ import annotations

import math

from torch import Tensor

from .._tensors import check_floating, check_same_device


def as_maps(name: str, t: Tensor) -> Tensor:
    """``t`` as a (B, C, HW) view (4-D maps flattened over H, W; no copy for contiguous or
    channels_last memory), after checking its type, dtype and sizes."""
    check_floating(name, t)
    if t.dim() not in (3, 4):
        raise ValueError(
            f"{name} must be a (B, C, H, W) or (B, C, HW) feature map, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    return t.flatten(2) if t.dim() == 4 else t


def check_same_spatial(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    """Same (H, W), or the same HW where one of the two is already flattened."""
    same = (a.shape[2:] == b.shape[2:] if a.dim() == b.dim()
            else math.prod(a.shape[2:]) == math.prod(b.shape[2:]))
    if not same:
        raise ValueError(
            f"{name_a} and {name_b} must have the same spatial size, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}; pool the larger one first (the FSP/NST modules do)")


def check_same_batch_dtype_device(**maps: Tensor) -> None:
    (first_name, first), *others = maps.items()
    for name, t in others:
        if t.shape[0] != first.shape[0]:
            raise ValueError(
                f"{name} has batch size {t.shape[0]} but {first_name} has {first.shape[0]}; "
                "all maps of one call must come from the same batch")
        if t.dtype != first.dtype:
            raise TypeError(f"{name} is {t.dtype} but {first_name} is {first.dtype}; "
                            "all maps of one call must share a dtype")
    check_same_device(first_name, first, **dict(others))
