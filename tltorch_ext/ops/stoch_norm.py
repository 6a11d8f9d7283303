"""StochNorm operators (docs/api_stochnorm.md).

- ``tltorch_ext::stoch_norm_forward``: functional; (y, save_mean, save_invstd, batch_mean,
  batch_var): the per-channel statistics each channel normalized with (all backward needs besides
  x, γ and the mask) and the biased batch statistics for the running update. Autograd is
  registered here once, whichever backend ran the forward.
- ``tltorch_ext::stoch_norm_backward``: (grad_x, grad_weight, grad_bias).
- :func:`update_running_stats` updates the running-statistics buffers with plain in-place torch
  ops (two lerps of C values: no kernel to fuse, and an op around them cost more than they do).
- The phases, for callers that combine statistics across processes between them (SyncStochNorm):
  ``stoch_norm_stats`` (x → batch mean, biased variance), ``stoch_norm_elemt`` (normalize with
  given statistics), ``stoch_norm_backward_reduce`` (Σdy, Σdy·x̂) and ``stoch_norm_backward_elemt``
  (dx from those sums and their count). They carry no autograd formula: they are the pieces an
  autograd.Function composes. Each backend's fused forward is its stats, selection and elemt in
  one call, and its fused backward its backward_reduce and backward_elemt, so that one process
  pays no extra dispatch.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._tensors import check_floating, check_same_device, memory_format_of, stat_dtype
from ._dispatch import implementation, resolve_for_backward

OP = "stoch_norm"


@torch.library.custom_op("tltorch_ext::stoch_norm_forward", mutates_args=())
def _forward(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    running_mean: Tensor,
    running_var: Tensor,
    mask: Tensor,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    fn = implementation(OP, "forward", x.device)
    return fn(x, weight, bias, running_mean, running_var, mask, eps)


@_forward.register_fake
def _(x, weight, bias, running_mean, running_var, mask, eps):
    stats = x.new_empty(x.shape[1], dtype=stat_dtype(x.dtype))
    return (torch.empty_like(x),) + tuple(torch.empty_like(stats) for _ in range(4))


@torch.library.custom_op("tltorch_ext::stoch_norm_backward", mutates_args=())
def _backward(
    grad_y: Tensor,
    x: Tensor,
    weight: Optional[Tensor],
    mask: Tensor,
    save_mean: Tensor,
    save_invstd: Tensor,
    backend: Optional[str] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    fn = implementation(OP, "backward", x.device, backend)
    return fn(grad_y.contiguous(memory_format=memory_format_of(x)), x, weight, mask, save_mean, save_invstd)


@_backward.register_fake
def _(grad_y, x, weight, mask, save_mean, save_invstd, backend=None):
    param = x.new_empty(x.shape[1], dtype=save_mean.dtype if weight is None else weight.dtype)
    return torch.empty_like(x), param, torch.empty_like(param)


def _setup_context(ctx, inputs, output):
    x, weight, bias, _running_mean, _running_var, mask, _eps = inputs
    _y, save_mean, save_invstd, batch_mean, batch_var = output
    # Gradients flow through y only: the statistics are outputs for the running update and for
    # backward, not differentiable functions of x here.
    ctx.mark_non_differentiable(save_mean, save_invstd, batch_mean, batch_var)
    ctx.save_for_backward(x, weight, mask, save_mean, save_invstd)
    ctx.has_bias = bias is not None
    ctx.backend = resolve_for_backward(OP, x.device)


def _autograd_backward(ctx, grad_y, *_grad_stats):
    x, weight, mask, save_mean, save_invstd = ctx.saved_tensors
    grad_x, grad_weight, grad_bias = _backward(grad_y, x, weight, mask, save_mean, save_invstd,
                                             ctx.backend)
    return (
        grad_x,
        grad_weight if weight is not None else None,
        grad_bias if ctx.has_bias else None,
        None, None, None, None,
    )


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


@torch.library.custom_op("tltorch_ext::stoch_norm_stats", mutates_args=())
def _stats(x: Tensor) -> tuple[Tensor, Tensor]:
    return implementation(OP, "stats", x.device)(x)


@_stats.register_fake
def _(x):
    stats = x.new_empty(x.shape[1], dtype=stat_dtype(x.dtype))
    return stats, torch.empty_like(stats)


@torch.library.custom_op("tltorch_ext::stoch_norm_elemt", mutates_args=())
def _elemt(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], save_mean: Tensor,
           save_invstd: Tensor) -> Tensor:
    return implementation(OP, "elemt", x.device)(x, weight, bias, save_mean, save_invstd)


@_elemt.register_fake
def _(x, weight, bias, save_mean, save_invstd):
    return torch.empty_like(x)


@torch.library.custom_op("tltorch_ext::stoch_norm_backward_reduce", mutates_args=())
def _backward_reduce(grad_y: Tensor, x: Tensor, save_mean: Tensor, save_invstd: Tensor,
                     backend: Optional[str] = None) -> tuple[Tensor, Tensor]:
    fn = implementation(OP, "backward_reduce", x.device, backend)
    return fn(grad_y.contiguous(memory_format=memory_format_of(x)), x, save_mean, save_invstd)


@_backward_reduce.register_fake
def _(grad_y, x, save_mean, save_invstd, backend=None):
    return torch.empty_like(save_mean), torch.empty_like(save_mean)


@torch.library.custom_op("tltorch_ext::stoch_norm_backward_elemt", mutates_args=())
def _backward_elemt(grad_y: Tensor, x: Tensor, weight: Optional[Tensor], mask: Tensor,
                    save_mean: Tensor, save_invstd: Tensor, sum_dy: Tensor, sum_dy_xhat: Tensor,
                    count: int, backend: Optional[str] = None) -> Tensor:
    fn = implementation(OP, "backward_elemt", x.device, backend)
    return fn(grad_y.contiguous(memory_format=memory_format_of(x)), x, weight, mask, save_mean,
              save_invstd, sum_dy, sum_dy_xhat, count)


@_backward_elemt.register_fake
def _(grad_y, x, weight, mask, save_mean, save_invstd, sum_dy, sum_dy_xhat, count, backend=None):
    return torch.empty_like(x)


def _check_x(x: Tensor) -> int:
    """x is a floating (N, C, *) tensor with at least one value per channel; returns C."""
    check_floating("x", x)
    if x.dim() < 2:
        raise ValueError(
            f"x must be (N, C, *) with at least 2 dimensions, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"x must have at least one value per channel, got shape {tuple(x.shape)}")
    return x.shape[1]


def _check_channel_args(x: Tensor, **tensors: Optional[Tensor]) -> None:
    channels = x.shape[1]
    for name, t in tensors.items():
        if t is not None and t.shape != (channels,):
            raise ValueError(f"{name} must have shape ({channels},) to match x's channels, "
                             f"got {tuple(t.shape)}")
    check_same_device("x", x, **tensors)


def _check_mask(mask: Tensor) -> None:
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")


def _check_like_x(name: str, t: Tensor, x: Tensor) -> Tensor:
    if t.shape != x.shape or t.dtype != x.dtype:
        raise ValueError(f"{name} must match x's shape {tuple(x.shape)} and dtype {x.dtype}, "
                         f"got {tuple(t.shape)} {t.dtype}")
    check_same_device("x", x, **{name: t})
    return t.contiguous(memory_format=memory_format_of(x))


def stoch_norm_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, var): x's per-channel batch mean and biased variance over every dimension but 1, in
    float32 (float64 for float64 x). Not differentiable."""
    _check_x(x)
    return _stats(x.contiguous(memory_format=memory_format_of(x)))


def stoch_norm_elemt(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                     save_mean: Tensor, save_invstd: Tensor) -> Tensor:
    """y = γ·(x − save_mean)·save_invstd + β per channel, in x's dtype and memory format (γ = 1,
    β = 0 where None). Not differentiable: :func:`stoch_norm` is the differentiable form."""
    _check_x(x)
    _check_channel_args(x, weight=weight, bias=bias, save_mean=save_mean, save_invstd=save_invstd)
    return _elemt(x.contiguous(memory_format=memory_format_of(x)), weight, bias, save_mean,
                  save_invstd)


def stoch_norm_backward_reduce(grad_y: Tensor, x: Tensor, save_mean: Tensor,
                               save_invstd: Tensor) -> tuple[Tensor, Tensor]:
    """(Σdy, Σdy·x̂) per channel over x's values, x̂ = (x − save_mean)·save_invstd, in the
    statistics' dtype: what the input gradient needs summed over every value normalized
    together (and γ's and β's gradients over these values)."""
    _check_x(x)
    _check_channel_args(x, save_mean=save_mean, save_invstd=save_invstd)
    grad_y = _check_like_x("grad_y", grad_y, x)
    return _backward_reduce(grad_y, x.contiguous(memory_format=memory_format_of(x)), save_mean,
                            save_invstd)


def stoch_norm_backward_elemt(grad_y: Tensor, x: Tensor, weight: Optional[Tensor], mask: Tensor,
                              save_mean: Tensor, save_invstd: Tensor, sum_dy: Tensor,
                              sum_dy_xhat: Tensor, count: int) -> Tensor:
    """dx = γ·invstd·(dy − s·Σdy/count − x̂·s·Σdy·x̂/count) per channel, s the mask: BatchNorm's
    gradient where s = 1, γ·invstd·dy where s = 0. sum_dy, sum_dy_xhat and count are over every
    value the statistics came from (the process group's, when they were all-reduced)."""
    _check_x(x)
    _check_channel_args(x, weight=weight, mask=mask, save_mean=save_mean,
                        save_invstd=save_invstd, sum_dy=sum_dy, sum_dy_xhat=sum_dy_xhat)
    _check_mask(mask)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int (values per channel), got {count!r}")
    grad_y = _check_like_x("grad_y", grad_y, x)
    return _backward_elemt(grad_y, x.contiguous(memory_format=memory_format_of(x)), weight, mask,
                           save_mean, save_invstd, sum_dy, sum_dy_xhat, count)


def stoch_norm(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    running_mean: Tensor,
    running_var: Tensor,
    mask: Tensor,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """StochNorm in training: (y, save_mean, save_invstd, batch_mean, batch_var).

    x is (N, C, *) in contiguous or channels_last format (y keeps it); mask is a bool (C,) tensor,
    True where the channel normalizes with the batch statistics, False where with the running
    ones. The running buffers are read, not updated (see :func:`update_running_stats`).
    """
    check_floating("x", x)
    if x.dim() < 2:
        raise ValueError(f"x must be (N, C, *) with at least 2 dimensions, got shape {tuple(x.shape)}")
    channels = x.shape[1]
    if x.numel() // max(channels, 1) < 2:
        raise ValueError(
            "StochNorm needs more than one value per channel in training "
            f"(N·spatial > 1), got input shape {tuple(x.shape)}"
        )
    _check_channel_args(x, weight=weight, bias=bias, running_mean=running_mean,
                        running_var=running_var, mask=mask)
    _check_mask(mask)
    x = x.contiguous(memory_format=memory_format_of(x))
    return _forward(x, weight, bias, running_mean, running_var, mask, float(eps))


def update_running_stats(running_mean, running_var, batch_mean, batch_var, count, factor):
    """running ← (1 − factor)·running + factor·batch, with the unbiased batch variance
    (batch_var is the biased one over ``count`` values per channel); factor a number or a 0-dim
    tensor."""
    if int(count) < 2:
        raise ValueError(f"count must be at least 2 values per channel, got {count}")
    channels = running_mean.shape
    for name, t in (("running_var", running_var), ("batch_mean", batch_mean),
                    ("batch_var", batch_var)):
        if t.shape != channels:
            raise ValueError(f"{name} must have running_mean's shape {tuple(channels)}, "
                             f"got {tuple(t.shape)}")
    check_same_device("running_mean", running_mean, running_var=running_var,
                      batch_mean=batch_mean, batch_var=batch_var)
    lerp_running_stats(running_mean, running_var, batch_mean, batch_var, int(count), factor)


def lerp_running_stats(running_mean, running_var, batch_mean, batch_var, count: int, factor):
    """:func:`update_running_stats` without its checks, for StochNorm's forward, whose buffers and
    batch statistics match by construction. BatchNorm's running variance follows the unbiased
    batch variance; a tensor factor (the cumulative average 1/num_batches_tracked) is taken to the
    buffers' device and dtype and, under torch.compile, stays in the graph."""
    if isinstance(factor, Tensor):
        factor = factor.to(running_mean.device, running_mean.dtype)
    with torch.no_grad():
        running_mean.lerp_(batch_mean.to(running_mean.dtype), factor)
        running_var.lerp_((batch_var * (count / (count - 1))).to(running_var.dtype), factor)
