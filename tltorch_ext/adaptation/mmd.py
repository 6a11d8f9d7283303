"""Kernel two-sample discrepancies for domain adaptation (docs/api_mmd.md): DAN's multi-kernel
MMD between source and target features and JAN's joint MMD over several layers, on the fused op
:mod:`tltorch_ext.ops.mk_mmd`."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..ops.mk_mmd import (
    DAN_ALPHAS,
    JAN_KERNELS,
    GaussianKernels,
    _check_estimate,
    joint_mk_mmd,
    mk_mmd,
)

__all__ = ["MultipleKernelMMD", "JointMultipleKernelMMD"]


def _check_offset(tllib_offset) -> bool:
    if not isinstance(tllib_offset, bool):
        raise TypeError(f"tllib_offset must be a bool, got {type(tllib_offset).__name__}")
    return tllib_offset


class MultipleKernelMMD(nn.Module):
    """MK-MMD² of DAN: forward(z_s, z_t) with (B, *) source and target features of one shape.

    The kernel is Σ_k exp(−‖z_i − z_j‖²/(2σ_k²)), σ_k² = α_k · the batch's mean squared
    distance (detached), plus one kernel per fixed σ; see :func:`tltorch_ext.ops.mk_mmd`. The
    default ``estimate="biased"`` is ≥ 0 for every batch; ``"unbiased"`` (with
    ``tllib_offset=True``: TLlib's ``linear=False`` value) and ``"linear"`` can be negative.
    No parameters or state.
    """

    def __init__(self, alphas: Sequence[float] = DAN_ALPHAS, sigmas: Sequence[float] = (),
                 estimate: str = "biased", tllib_offset: bool = False):
        super().__init__()
        self.kernels = GaussianKernels(alphas, sigmas)
        self.estimate = _check_estimate(estimate)
        self.tllib_offset = _check_offset(tllib_offset)

    def extra_repr(self) -> str:
        return (f"alphas={self.kernels.alphas}, sigmas={self.kernels.sigmas}, "
                f"estimate={self.estimate!r}, tllib_offset={self.tllib_offset}")

    def forward(self, z_s: Tensor, z_t: Tensor) -> Tensor:
        return mk_mmd(z_s, z_t, self.kernels.alphas, self.kernels.sigmas, self.estimate,
                      self.tllib_offset)


class JointMultipleKernelMMD(nn.Module):
    """Joint MMD² of JAN: forward(z_s, z_t) with one (B, *) tensor per layer in each sequence
    (the same B samples); the kernel is the product over layers of each layer's
    :class:`~tltorch_ext.ops.GaussianKernels` sum. Default kernels: DAN's five relative
    bandwidths on the first layer (features), a fixed σ = 0.92 on the second (softmax outputs),
    as TLlib's JAN script. ``estimate`` and ``tllib_offset`` as in :class:`MultipleKernelMMD`
    (TLlib's JointMultipleKernelMaximumMeanDiscrepancy defaults to ``linear``).
    """

    def __init__(self, kernels: Sequence[GaussianKernels] = JAN_KERNELS,
                 estimate: str = "biased", tllib_offset: bool = False):
        super().__init__()
        if isinstance(kernels, GaussianKernels) or not isinstance(kernels, Sequence) or not all(
                isinstance(k, GaussianKernels) for k in kernels) or not kernels:
            raise TypeError("kernels must be a non-empty sequence of GaussianKernels, one per "
                            "layer")
        self.kernels = tuple(kernels)
        self.estimate = _check_estimate(estimate)
        self.tllib_offset = _check_offset(tllib_offset)

    def extra_repr(self) -> str:
        return (f"layers={len(self.kernels)}, estimate={self.estimate!r}, "
                f"tllib_offset={self.tllib_offset}")

    def forward(self, z_s: Sequence[Tensor], z_t: Sequence[Tensor]) -> Tensor:
        return joint_mk_mmd(z_s, z_t, self.kernels, self.estimate, self.tllib_offset)
