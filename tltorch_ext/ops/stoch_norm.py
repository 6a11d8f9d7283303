"""StochNorm operators (docs/api_stochnorm.md).

- ``tltorch_ext::stoch_norm_forward``: functional; (y, save_mean, save_invstd, batch_mean,
  batch_var): the per-channel statistics each channel normalized with (all backward needs besides
  x, γ and the mask) and the biased batch statistics for the running update. Autograd is
  registered here once, whichever backend ran the forward.
- ``tltorch_ext::stoch_norm_backward``: (grad_x, grad_weight, grad_bias).
- ``tltorch_ext::stoch_norm_update_running_stats_``: mutates the running-statistics buffers.
  torch.library refuses autograd formulas on mutating ops, so the buffer update is an op of its own.
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


@torch.library.custom_op(
    "tltorch_ext::stoch_norm_update_running_stats_", mutates_args=("running_mean", "running_var")
)
def _update_running_stats(
    running_mean: Tensor, running_var: Tensor, batch_mean: Tensor, batch_var: Tensor, count: int,
    factor: Tensor,
) -> None:
    # BatchNorm's running variance follows the unbiased batch variance. factor is a 0-dim tensor,
    # so the cumulative average 1/num_batches_tracked stays in the graph under torch.compile.
    factor = factor.to(running_mean.device, running_mean.dtype)
    with torch.no_grad():
        running_mean.lerp_(batch_mean.to(running_mean.dtype), factor)
        running_var.lerp_((batch_var * (count / (count - 1))).to(running_var.dtype), factor)


@_update_running_stats.register_fake
def _(running_mean, running_var, batch_mean, batch_var, count, factor):
    return None


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
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var), ("mask", mask)):
        if t is not None and t.shape != (channels,):
            raise ValueError(f"{name} must have shape ({channels},) to match x's channels, got {tuple(t.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    check_same_device("x", x, weight=weight, bias=bias, running_mean=running_mean,
                      running_var=running_var, mask=mask)
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
    if not isinstance(factor, Tensor):
        # In the buffers' dtype: a float32 0-dim tensor would round a float64 momentum.
        factor = torch.tensor(float(factor), dtype=running_mean.dtype)
    _update_running_stats(running_mean, running_var, batch_mean, batch_var, int(count), factor)
