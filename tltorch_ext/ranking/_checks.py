"""Argument checks shared by the transferability scores, built on the package-wide ones in
``tltorch_ext._tensors``: each returns the float64 (or index) form the scores compute with."""
import torch

from .._tensors import check_floating, check_integer, check_same_device


def _check_finite(name: str, t: torch.Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite; it holds NaN or inf")


def _samples64(name: str, t, column: str) -> torch.Tensor:
    """(N, C) floating rows with N >= 2, C >= 1 (``column`` names what a column is) and no NaN/inf,
    as float64."""
    check_floating(name, t, ndim=2)
    n, c = t.shape
    if n < 2:
        raise ValueError(f"{name} must hold at least two samples (N >= 2), got shape ({n}, {c})")
    if c < 1:
        raise ValueError(f"{name} must have at least one {column}, got shape ({n}, {c})")
    _check_finite(name, t)
    return t.detach().to(torch.float64)


def features64(name: str, features) -> torch.Tensor:
    """(N, D) floating features with N >= 2, D >= 1 and no NaN/inf, as float64."""
    return _samples64(name, features, "feature (D >= 1)")


def probabilities64(name: str, probabilities) -> torch.Tensor:
    """(N, Cs) rows of class probabilities, as float64: finite, in [0, 1], each row summing to 1
    within max(1e-3, 4 eps) of the input dtype (a float16/bfloat16 softmax rounds each entry)."""
    p = _samples64(name, probabilities, "source class")
    low, high = (float(v) for v in torch.aminmax(p))
    if low < 0 or high > 1:
        raise ValueError(f"{name} must lie in [0, 1], got values in [{low:g}, {high:g}]")
    tolerance = max(1e-3, 4 * torch.finfo(probabilities.dtype).eps)
    off = float((p.sum(1) - 1).abs().max())
    if off > tolerance:
        raise ValueError(f"{name} rows must sum to 1 (within {tolerance:g}); the farthest row is "
                         f"off by {off:g}")
    return p


def class_indices(name: str, labels, reference_name: str | None = None,
                  reference: torch.Tensor | None = None,
                  min_classes: int = 2) -> tuple[torch.Tensor, int]:
    """(N,) integer labels, any values (the classes are the distinct values present, in increasing
    order), at least ``min_classes`` of them, N >= 2; one per row of ``reference`` and on its
    device when given. Returns (each sample's class index as int64 in [0, C), C)."""
    check_integer(name, labels, ndim=1)
    n = labels.shape[0]
    if reference is not None:
        check_same_device(reference_name, reference, **{name: labels})
        if n != reference.shape[0]:
            raise ValueError(f"{name} must have shape ({reference.shape[0]},), one label per row "
                             f"of {reference_name}, got {tuple(labels.shape)}")
    if n < 2:
        raise ValueError(f"{name} must hold at least two samples (N >= 2), got shape ({n},)")
    classes, index = torch.unique(labels, return_inverse=True)
    if len(classes) < min_classes:
        raise ValueError(f"{name} must hold at least {min_classes} distinct classes, got "
                         f"{len(classes)}")
    return index.long(), len(classes)
