"""Facts about tensors that every backend, op wrapper and module shares: the accumulation dtype,
the memory format kernels see, and the argument checks (a wrong type is a TypeError, a wrong
value, shape or device a ValueError, each naming the argument). A leaf: it imports nothing of the
package, so the backends (reference, Triton) import it without importing the dispatcher."""
from __future__ import annotations

import math
import numbers

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


def check_floating(name: str, t, ndim: int | None = None) -> torch.Tensor:
    """``t`` itself, when it is a float16/bfloat16/float32/float64 tensor (with ``ndim``
    dimensions when given)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def check_integer(name: str, t, ndim: int | None = None) -> torch.Tensor:
    """``t`` itself, when it is an integer (not bool) tensor (with ``ndim`` dimensions when
    given): class labels and indices, which are never silently cast from floating values."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _INTEGER_DTYPES:
        raise TypeError(f"{name} must have an integer dtype (uint8, int8, int16, int32 or "
                        f"int64), got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


def check_nonempty_batch(name: str, t: torch.Tensor) -> torch.Tensor:
    """A loss averages over the batch: an empty one has no defined value, so it is refused."""
    if t.dim() == 0 or t.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one sample (N >= 1), got shape "
                         f"{tuple(t.shape)}")
    return t


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def real_number(name: str, value, low: float = -math.inf, high: float = math.inf,
                positive: bool = False) -> float:
    """``value`` as a float: finite, in [low, high], and > 0 when ``positive``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high or (positive and value <= 0):
        bounds = "> 0" if positive else f"in [{low:g}, {high:g}]"
        raise ValueError(f"{name} must be a finite number {bounds}, got {value!r}")
    return value


def check_same_device(reference_name: str, reference: torch.Tensor, **others) -> None:
    for name, t in others.items():
        if t is not None and t.device != reference.device:
            raise ValueError(
                f"{name} is on {t.device} but {reference_name} is on {reference.device}; "
                "all tensors of one call must be on the same device"
            )
