"""Gradient reversal (Ganin & Lempitsky, 2015): identity forward, negated scaled gradient back."""
import numbers

import torch
from torch import nn

from .._tensors import check_floating, positive_int, real_number

__all__ = ["grad_reverse", "GradientReverseLayer", "WarmStartGradientReverseLayer"]


class _GradientReverse(torch.autograd.Function):
    # forward / setup_context kept apart so that torch.compile and functorch can trace it.
    @staticmethod
    def forward(x, coeff):
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.coeff = inputs[1]

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * (-ctx.coeff), None


def _check_coeff(coeff):
    if isinstance(coeff, torch.Tensor):
        if coeff.ndim != 0 or not coeff.is_floating_point():
            raise TypeError(
                f"coeff must be a real number or a 0-dim floating tensor, got a tensor of shape "
                f"{tuple(coeff.shape)} and dtype {coeff.dtype}"
            )
    elif isinstance(coeff, bool) or not isinstance(coeff, numbers.Real):
        raise TypeError(
            f"coeff must be a real number or a 0-dim floating tensor, got {type(coeff)}"
        )


def grad_reverse(x: torch.Tensor, coeff=1.0) -> torch.Tensor:
    """Gradient reversal: y = x in the forward pass, ∂L/∂x = −coeff · ∂L/∂y in the backward pass.

    Args:
        x: a floating-point tensor.
        coeff: λ, a real number or a 0-dim floating tensor (no gradient flows to it; a tensor lets
            the value change between steps without recompiling under ``torch.compile``).

    The output is a view of ``x``; modify it in place only after cloning.
    """
    check_floating("x", x)  # an integer tensor has no gradient to reverse
    _check_coeff(coeff)
    return _GradientReverse.apply(x, coeff)


class GradientReverseLayer(nn.Module):
    """Module form of :func:`grad_reverse`: ``forward(x, coeff=1.0)``, identity forward, gradient
    × −coeff backward."""

    def forward(self, x: torch.Tensor, coeff=1.0) -> torch.Tensor:
        return grad_reverse(x, coeff)


class WarmStartGradientReverseLayer(nn.Module):
    """Gradient reversal whose coefficient rises from ``lo`` towards ``hi`` with the iteration i:

        coeff(i) = 2 (hi − lo) / (1 + exp(−α · i / max_iters)) − (hi − lo) + lo,

    so coeff(0) = lo and coeff(i) → hi as i → ∞ (DANN's schedule with lo=0, hi=1, α=10, i/max_iters
    the training progress). The discriminator then starts learning before its reversed gradient
    reaches the feature extractor at full strength.

    Args:
        alpha: α, the steepness of the schedule.
        lo, hi: the coefficient at i = 0 and its limit.
        max_iters: the iteration count that normalizes i (positive integer).
        auto_step: when True, each forward pass in training mode advances i by one after use.

    The iteration i is the int64 buffer ``iter_num`` (saved in ``state_dict``); ``step()``
    advances it, ``coeff`` reads the current coefficient.
    """

    def __init__(self, alpha=1.0, lo=0.0, hi=1.0, max_iters=1000, auto_step=False):
        super().__init__()
        self.alpha, self.lo, self.hi = (real_number(name, value) for name, value in
                                        (("alpha", alpha), ("lo", lo), ("hi", hi)))
        self.max_iters = positive_int("max_iters", max_iters)
        self.auto_step = bool(auto_step)
        self.register_buffer("iter_num", torch.zeros((), dtype=torch.int64))

    def _coeff_tensor(self) -> torch.Tensor:
        # A 0-dim float32 tensor on the buffer's device: no host sync in forward, no recompilation
        # under torch.compile as i changes, and it scales gradients of any floating dtype.
        progress = self.iter_num.to(torch.float32) * (self.alpha / self.max_iters)
        span = self.hi - self.lo
        return 2.0 * span / (1.0 + torch.exp(-progress)) - span + self.lo

    @property
    def coeff(self) -> float:
        """The current coefficient coeff(i) as a Python float."""
        return float(self._coeff_tensor())

    def step(self) -> None:
        """Advance the iteration i by one."""
        # Out of place on purpose: an in-place add_ on a buffer that the forward already read lets
        # torch.compile's partitioner recompute the coefficient in backward from the updated value
        # (pytorch/pytorch#197039); rebinding the buffer keeps the value the forward pass used.
        self.iter_num = self.iter_num + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coeff = self._coeff_tensor()
        if self.auto_step and self.training:
            self.step()
        return grad_reverse(x, coeff)

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, lo={self.lo}, hi={self.hi}, max_iters={self.max_iters}, "
            f"auto_step={self.auto_step}"
        )
