"""Argument checks and reductions shared by the adaptation losses."""
import torch

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply 'none' | 'mean' | 'sum' to a vector of per-sample losses."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def check_per_sample(name: str, v, n: int, device: torch.device, allow_bool=False) -> torch.Tensor:
    """Raise unless ``v`` is a vector of n floating (or, if allowed, bool) values on ``device``."""
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(v)}")
    if not (v.is_floating_point() or (allow_bool and v.dtype == torch.bool)):
        kinds = "a floating or bool" if allow_bool else "a floating"
        raise TypeError(f"{name} must have {kinds} dtype, got {v.dtype}")
    if v.shape != (n,):
        raise ValueError(
            f"{name} must have shape ({n},) (one value per sample), got {tuple(v.shape)}"
        )
    if v.device != device:
        raise ValueError(f"{name} must be on {device}, got {v.device}")
    return v
