"""Facts about tensors that every backend, op wrapper and module shares: the accumulation dtype,
the memory format kernels see, and the argument checks. A leaf: it imports nothing of the package,
so the backends (reference, Triton) import it without importing the dispatcher."""
from __future__ import annotations

import torch


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, float32 otherwise (ATen's opmath type; the
    C++ and CUDA kernels use at::toOpMathType)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last / channels_last_3d for a 4-D / 5-D tensor laid out so (and not also
    contiguous), else contiguous_format: the layout the StochNorm kernels keep."""
    if not x.is_contiguous():
        for fmt, ndim in ((torch.channels_last, 4), (torch.channels_last_3d, 5)):
            if x.dim() == ndim and x.is_contiguous(memory_format=fmt):
                return fmt
    return torch.contiguous_format


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_floating(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def check_same_device(reference_name: str, reference: torch.Tensor, **others) -> None:
    for name, t in others.items():
        if t is not None and t.device != reference.device:
            raise ValueError(
                f"{name} is on {t.device} but {reference_name} is on {reference.device}; "
                "all tensors of one call must be on the same device"
            )
