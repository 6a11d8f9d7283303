"""Plain-PyTorch StochNorm (docs/api_stochnorm.md): the oracle and the fallback backend.

Per channel c with selection s_c (the mask): the statistics used are the batch ones (μ_B, σ²_B,
biased) where s_c = 1 and the running ones where s_c = 0; x̂ = (x − μ)·invstd, y = γ x̂ + β.

The four phases (``stats``, ``elemt``, ``backward_reduce``, ``backward_elemt``) are what every
backend exposes; ``forward`` and ``backward`` are the phases composed for one process, and
SyncStochNorm runs them with an all_reduce between them.
"""
from __future__ import annotations

import torch

from .._tensors import stat_dtype


def _per_channel(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a (C,) tensor so that it broadcasts along dimension 1 of x."""
    return t.view([1, -1] + [1] * (x.dim() - 2))


def _reduced_dims(x: torch.Tensor) -> list[int]:
    return [0] + list(range(2, x.dim()))


def _normalized(x, save_mean, save_invstd):
    """x̂ = (x − save_mean)·save_invstd per channel, in the statistics' dtype."""
    return (x.to(save_mean.dtype) - _per_channel(save_mean, x)) * _per_channel(save_invstd, x)


def stats(x):
    """(mean, var): the biased per-channel batch statistics of x, in float32 (float64 for
    float64 x)."""
    var, mean = torch.var_mean(x.to(stat_dtype(x.dtype)), dim=_reduced_dims(x), correction=0)
    return mean, var


def elemt(x, weight, bias, save_mean, save_invstd):
    """y = γ·(x − save_mean)·save_invstd + β per channel, in x's dtype."""
    acc = save_invstd.dtype
    scale = save_invstd if weight is None else save_invstd * weight.to(acc)
    shift = -save_mean * scale
    if bias is not None:
        shift = shift + bias.to(acc)
    return (x.to(acc) * _per_channel(scale, x) + _per_channel(shift, x)).to(x.dtype)


def backward_reduce(grad_y, x, save_mean, save_invstd):
    """(Σdy, Σdy·x̂) per channel over x's values, x̂ = (x − save_mean)·save_invstd."""
    xhat = _normalized(x, save_mean, save_invstd)
    dy = grad_y.to(save_mean.dtype)
    dims = _reduced_dims(x)
    return dy.sum(dims), (dy * xhat).sum(dims)


def backward_elemt(grad_y, x, weight, mask, save_mean, save_invstd, sum_dy, sum_dy_xhat, count):
    """dx = γ·invstd·(dy − s·Σdy/count − x̂·s·Σdy·x̂/count): BatchNorm's gradient where s = 1,
    γ·invstd·dy where s = 0 (constant statistics). The sums and count are over every value the
    statistics were taken over (the whole process group's for SyncStochNorm)."""
    acc = save_mean.dtype
    xhat = _normalized(x, save_mean, save_invstd)
    gamma = torch.ones_like(save_invstd) if weight is None else weight.to(acc)
    batch = mask.to(acc) / count
    grad_x = _per_channel(gamma * save_invstd, x) * (
        grad_y.to(acc) - _per_channel(batch * sum_dy, x)
        - xhat * _per_channel(batch * sum_dy_xhat, x)
    )
    return grad_x.to(x.dtype)


def forward(x, weight, bias, running_mean, running_var, mask, eps):
    """Returns (y, save_mean, save_invstd, batch_mean, batch_var).

    save_mean/save_invstd are the statistics each channel normalized with (what backward needs);
    batch_mean/batch_var (biased) feed the running-statistics update. All in float32 (float64 for
    float64 input).
    """
    mean, var = stats(x)
    save_mean = torch.where(mask, mean, running_mean.to(mean.dtype))
    save_invstd = torch.rsqrt(torch.where(mask, var, running_var.to(var.dtype)) + eps)
    return elemt(x, weight, bias, save_mean, save_invstd), save_mean, save_invstd, mean, var


def backward(grad_y, x, weight, mask, save_mean, save_invstd):
    """Returns (grad_x, grad_weight, grad_bias); grad_weight/bias as if γ = 1 when weight is
    None."""
    sum_dy, sum_dy_xhat = backward_reduce(grad_y, x, save_mean, save_invstd)
    grad_x = backward_elemt(grad_y, x, weight, mask, save_mean, save_invstd, sum_dy, sum_dy_xhat,
                            x.numel() // x.shape[1])
    param_dtype = save_mean.dtype if weight is None else weight.dtype
    return grad_x, sum_dy_xhat.to(param_dtype), sum_dy.to(param_dtype)
