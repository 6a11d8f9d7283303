"""Plain-PyTorch StochNorm forward and backward (docs/api_stochnorm.md): the oracle and the
fallback backend.

Per channel c with selection s_c (the mask): the statistics used are the batch ones (μ_B, σ²_B,
biased) where s_c = 1 and the running ones where s_c = 0; x̂ = (x − μ)·invstd, y = γ x̂ + β.
"""
from __future__ import annotations

import torch

from .._tensors import stat_dtype


def _per_channel(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a (C,) tensor so that it broadcasts along dimension 1 of x."""
    return t.view([1, -1] + [1] * (x.dim() - 2))


def forward(x, weight, bias, running_mean, running_var, mask, eps):
    """Returns (y, save_mean, save_invstd, batch_mean, batch_var).

    save_mean/save_invstd are the statistics each channel normalized with (what backward needs);
    batch_mean/batch_var (biased) feed the running-statistics update. All in float32 (float64 for
    float64 input).
    """
    acc = stat_dtype(x.dtype)
    xf = x.to(acc)
    dims = [0] + list(range(2, x.dim()))
    var, mean = torch.var_mean(xf, dim=dims, correction=0)
    save_mean = torch.where(mask, mean, running_mean.to(acc))
    save_invstd = torch.rsqrt(torch.where(mask, var, running_var.to(acc)) + eps)
    scale = save_invstd if weight is None else save_invstd * weight.to(acc)
    shift = -save_mean * scale
    if bias is not None:
        shift = shift + bias.to(acc)
    y = xf * _per_channel(scale, x) + _per_channel(shift, x)
    return y.to(x.dtype), save_mean, save_invstd, mean, var


def backward(grad_y, x, weight, mask, save_mean, save_invstd):
    """Returns (grad_x, grad_weight, grad_bias); grad_weight/bias as if γ = 1 when weight is None.

    Channels with s = 1 get BatchNorm's gradient γ·invstd·(dy − mean(dy) − x̂·mean(dy·x̂));
    channels with s = 0 normalize by constants, so dx = γ·invstd_R·dy.
    """
    acc = save_mean.dtype
    dims = [0] + list(range(2, x.dim()))
    count = x.numel() // x.shape[1]
    xhat = (x.to(acc) - _per_channel(save_mean, x)) * _per_channel(save_invstd, x)
    dy = grad_y.to(acc)
    sum_dy = dy.sum(dims)
    sum_dy_xhat = (dy * xhat).sum(dims)
    gamma = torch.ones_like(save_invstd) if weight is None else weight.to(acc)
    batch = mask.to(acc) / count
    grad_x = _per_channel(gamma * save_invstd, x) * (
        dy - _per_channel(batch * sum_dy, x) - xhat * _per_channel(batch * sum_dy_xhat, x)
    )
    param_dtype = acc if weight is None else weight.dtype
    return grad_x.to(x.dtype), sum_dy_xhat.to(param_dtype), sum_dy.to(param_dtype)
