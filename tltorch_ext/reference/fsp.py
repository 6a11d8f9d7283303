"""Plain-PyTorch FSP (docs/api_fsp_nst.md): the fallback backend, built on ``torch.bmm``.

Maps are (B, C, HW) (any strides). The FSP matrix of a pair (bot, top) of one network is
G = top · botᵀ / HW ∈ ℝ^{B × C_top × C_bot}. The fused loss is mean((G_s − G_t)²); its input
gradients all have the form α · op(M) · X with M = G_s − G_t (see :func:`backward`).
Products accumulate in float32 (float64 for float64 inputs); ``torch.bmm`` follows
``torch.backends.cuda.matmul.allow_tf32``, so float32 stays IEEE unless the user opts in.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._tensors import stat_dtype


def _gram(bot: Tensor, top: Tensor) -> Tensor:
    """top · botᵀ / HW in the accumulation dtype."""
    acc = stat_dtype(top.dtype)
    return torch.bmm(top.to(acc), bot.to(acc).transpose(1, 2)).div_(top.shape[-1])


def matrix(bot: Tensor, top: Tensor) -> Tensor:
    """G = top · botᵀ / HW, (B, C_top, C_bot), in the inputs' dtype."""
    return _gram(bot, top).to(top.dtype)


def forward(bot_s: Tensor, top_s: Tensor, bot_t: Tensor, top_t: Tensor,
            keep_diff: bool) -> tuple[Tensor, Tensor]:
    """(mean((G_s − G_t)²) in the inputs' dtype, D = G_s − G_t in the accumulation dtype when
    ``keep_diff``, else an empty tensor)."""
    diff = _gram(bot_s, top_s) - _gram(bot_t, top_t)
    loss = diff.square().mean().to(top_s.dtype)
    return loss, diff if keep_diff else diff.new_empty(0)


def backward(m: Tensor, x: Tensor, transpose_m: bool, alpha: float,
             grad: Optional[Tensor]) -> Tensor:
    """α · grad · op(M) · X in X's dtype, op(M) = Mᵀ (per sample) when ``transpose_m``.

    M is (B, R, J) (or (B, J, R) transposed), X (B, J, L); ``grad`` an optional scalar tensor.
    """
    acc = stat_dtype(x.dtype)
    m = m.to(acc)
    out = torch.bmm(m.transpose(1, 2) if transpose_m else m, x.to(acc)).mul_(alpha)
    if grad is not None:
        out.mul_(grad.to(acc))
    return out.to(x.dtype)
