"""Adaptive Feature Norm (AFN, Xu et al., 2019): larger feature norms transfer better, so the
feature norms of both domains are driven up, either towards a fixed radius (HAFN) or by a fixed
step at each iteration (SAFN)."""
import torch
from torch import nn

from .._tensors import check_floating, check_nonempty_batch, real_number, stat_dtype
from ._checks import check_reduction, reduce

__all__ = ["AdaptiveFeatureNorm", "StepwiseAdaptiveFeatureNorm"]


def _norms(name: str, f: torch.Tensor) -> torch.Tensor:
    """||f_i||_2 of each sample of f (N, ...), in float32 (float64 for float64 input)."""
    check_nonempty_batch(name, check_floating(name, f))
    return torch.linalg.vector_norm(f.to(stat_dtype(f.dtype)).flatten(1), dim=1)


class StepwiseAdaptiveFeatureNorm(nn.Module):
    """Stepwise AFN (SAFN): per sample,

        ℓ_i = (||f_i||_2 − (sg(||f_i||_2) + Δr))²,

    with sg the stop-gradient (``detach``): the target radius is the sample's current norm plus Δr.
    The value is Δr² for every sample; its gradient, ∂ℓ_i/∂f_i = −2 Δr f_i / ||f_i||_2, points
    along −f_i, so a descent step lengthens every feature vector by a step proportional to Δr,
    whatever its current norm. Apply it to the features of both domains (the paper uses the
    target, or source and target together).

    Norms are computed in float32 for float16/bfloat16 features (float64 for float64), and the loss
    is returned in that dtype. A zero feature vector gets a zero gradient (its direction is
    undefined).

    Args:
        delta: Δr, finite and > 0.
        reduction: 'none' (the (N,) vector) | 'mean' | 'sum'.

    ``forward(f)``: features (N ≥ 1, ...); each sample's trailing dimensions are flattened.
    """

    def __init__(self, delta: float = 1.0, reduction="mean"):
        super().__init__()
        self.delta = real_number("delta", delta, positive=True)
        self.reduction = check_reduction(reduction)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        norm = _norms("f", f)
        return reduce((norm - (norm.detach() + self.delta)).square(), self.reduction)

    def extra_repr(self) -> str:
        return f"delta={self.delta}, reduction={self.reduction!r}"


class AdaptiveFeatureNorm(nn.Module):
    """Hard AFN (HAFN): per sample ℓ_i = (||f_i||_2 − R)², pulling every feature norm to the fixed
    radius R. Its gradient is 2 (||f_i||_2 − R) f_i / ||f_i||_2.

    Norms are computed in float32 for float16/bfloat16 features (float64 for float64), and the loss
    is returned in that dtype.

    Args:
        radius: R, finite and > 0.
        reduction: 'none' (the (N,) vector) | 'mean' | 'sum'.

    ``forward(f)``: features (N ≥ 1, ...); each sample's trailing dimensions are flattened.
    """

    def __init__(self, radius: float, reduction="mean"):
        super().__init__()
        self.radius = real_number("radius", radius, positive=True)
        self.reduction = check_reduction(reduction)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return reduce((_norms("f", f) - self.radius).square(), self.reduction)

    def extra_repr(self) -> str:
        return f"radius={self.radius}, reduction={self.reduction!r}"
