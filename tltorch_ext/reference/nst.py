"""Plain-PyTorch NST (docs/api_fsp_nst.md): the fallback backend, built on ``torch.bmm``.

f_s (B, C_s, HW) and f_t (B, C_t, HW) (any strides); each channel's row is L2-normalized,
s_i = f_i / max(‖f_i‖, ε), ε = 1e-12. With S (C_s × HW) and T (C_t × HW) the normalized rows of
one sample, the loss is

    (1/B) Σ_b [ ‖T Tᵀ‖²/C_t² + ‖S Sᵀ‖²/C_s² − 2 ‖S Tᵀ‖²/(C_s C_t) ]          (channel side)
  = (1/B) Σ_b ‖SᵀS/C_s − TᵀT/C_t‖²_F                                      (spatial side)

(Σ_ij (a_i·b_j)² = ‖A Bᵀ‖² = ⟨AᵀA, BᵀB⟩). The teacher self-term ‖T Tᵀ‖² carries no gradient.
Gradients with respect to the normalized rows, g the upstream gradient:
  spatial:  dS = 4g/(B C_s) · S E,                  dT = −4g/(B C_s C_t) · T P_s,
            with P_s = SᵀS, E = P_s/C_s − TᵀT/C_t;
  channel:  dS = 4g/B · (S Sᵀ S/C_s² − S Tᵀ T/(C_s C_t)),   dT = −4g/(B C_s C_t) · T Sᵀ S;
then through the normalization: df_i = (ds_i − s_i ⟨s_i, ds_i⟩)/‖f_i‖ (ds_i/ε where ‖f_i‖ ≤ ε).
Accumulation in float32 (float64 for float64 inputs); the op layer (tltorch_ext.ops.nst) hands
the channel-side forward float64 maps where float64 is fast (CPU, full-rate GPUs).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._tensors import stat_dtype

EPS = 1e-12


def _normalized(f: Tensor, norm: Tensor) -> Tensor:
    return f.to(norm.dtype) / norm.clamp_min(EPS).unsqueeze(-1)


def _self_gram(x: Tensor, spatial: bool) -> Tensor:
    """XᵀX (HW × HW) when ``spatial``, else X Xᵀ (C × C), per sample."""
    return torch.bmm(x.transpose(1, 2), x) if spatial else torch.bmm(x, x.transpose(1, 2))


def forward(f_s: Tensor, f_t: Tensor, spatial: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(loss in the inputs' dtype, ‖f_s rows‖ (B, C_s), ‖f_t rows‖ (B, C_t)); norms in the
    accumulation dtype."""
    acc = stat_dtype(f_s.dtype)
    norm_s = torch.linalg.vector_norm(f_s.to(acc), dim=-1)
    norm_t = torch.linalg.vector_norm(f_t.to(acc), dim=-1)
    s, t = _normalized(f_s, norm_s), _normalized(f_t, norm_t)
    batch, c_s, c_t = f_s.shape[0], f_s.shape[1], f_t.shape[1]
    if spatial:
        loss = (_self_gram(s, True) / c_s - _self_gram(t, True) / c_t).square().sum()
    else:
        loss = (_self_gram(t, False).square().sum() / c_t**2
                + _self_gram(s, False).square().sum() / c_s**2
                - 2 * torch.bmm(s, t.transpose(1, 2)).square().sum() / (c_s * c_t))
    return (loss / batch).to(f_s.dtype), norm_s, norm_t


def normalize_backward(ds: Tensor, f: Tensor, norm: Tensor) -> Tensor:
    """Gradient with respect to f of s = f / max(‖f‖, ε), given ds, in f's dtype."""
    s = _normalized(f, norm)
    radial = (s * ds).sum(-1, keepdim=True) * (norm > EPS).unsqueeze(-1)
    return ((ds - s * radial) / norm.clamp_min(EPS).unsqueeze(-1)).to(f.dtype)


def backward(grad: Tensor, f_s: Tensor, f_t: Tensor, norm_s: Tensor, norm_t: Tensor,
             spatial: bool, need_s: bool, need_t: bool) -> tuple[Tensor, Tensor]:
    """(dloss/df_s, dloss/df_t), each an empty tensor where not needed."""
    s, t = _normalized(f_s, norm_s), _normalized(f_t, norm_t)
    batch, c_s, c_t = f_s.shape[0], f_s.shape[1], f_t.shape[1]
    g = 4 * grad.to(s.dtype) / batch
    grad_s = grad_t = f_s.new_empty(0)
    if spatial:
        p_s = _self_gram(s, True)
        if need_s:
            e = p_s / c_s - _self_gram(t, True) / c_t
            grad_s = normalize_backward(torch.bmm(s, e) * (g / c_s), f_s, norm_s)
        if need_t:
            grad_t = normalize_backward(torch.bmm(t, p_s) * (-g / (c_s * c_t)), f_t, norm_t)
    else:
        k_st = torch.bmm(s, t.transpose(1, 2))
        if need_s:
            ds = (torch.bmm(_self_gram(s, False), s) / c_s**2
                  - torch.bmm(k_st, t) / (c_s * c_t))
            grad_s = normalize_backward(ds * g, f_s, norm_s)
        if need_t:
            grad_t = normalize_backward(
                torch.bmm(k_st.transpose(1, 2), s) * (-g / (c_s * c_t)), f_t, norm_t)
    return grad_s, grad_t
