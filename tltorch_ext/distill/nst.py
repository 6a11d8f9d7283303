"""Neuron selectivity transfer (NST) distillation (docs/api_fsp_nst.md); the fused op is
:func:`tltorch_ext.ops.nst_loss`."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..ops.nst import nst_loss
from ._spatial import check_map, match_spatial

__all__ = ["NSTLoss"]


class NSTLoss(nn.Module):
    r"""NST loss with the polynomial kernel k(a, b) = (a·b)² (Huang and Wang, 2017).

    For each pair (f_s, f_t) of maps (B, C_s, H, W), (B, C_t, H', W') (channel counts may differ)
    the larger map is average-pooled (adaptively) to the smaller spatial size, each channel's map
    is flattened and L2-normalized over HW (x / max(‖x‖, 1e-12)), and with s_i, t_j the
    normalized channels of one sample the loss is

        mean_b [ mean_ij k(t_i, t_j) + mean_ij k(s_i, s_j) − 2 mean_ij k(s_i, t_j) ],

    the teacher term carrying no gradient. The fused op evaluates it as
    (1/B) Σ_b ‖S_bᵀS_b/C_s − T_bᵀT_b/C_t‖²_F from the cheaper of the HW × HW or C × C Grams and
    never materializes a (B, C, C, HW) tensor.

    Shape:
        forward(g_s, g_t): two equally long lists of (B, C, H, W) maps → list of scalar losses,
        one per pair. Gradients reach whichever maps require them.
    """

    def forward(self, g_s: Sequence[torch.Tensor],
                g_t: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        for name, maps in (("g_s", g_s), ("g_t", g_t)):
            if not isinstance(maps, Sequence):
                raise TypeError(f"{name} must be a list of feature maps, got {type(maps).__name__}")
        if len(g_s) != len(g_t) or len(g_s) == 0:
            raise ValueError(f"g_s and g_t must be non-empty lists of equal length, got "
                             f"{len(g_s)} and {len(g_t)}")
        losses = []
        for i, (f_s, f_t) in enumerate(zip(g_s, g_t)):
            check_map(f"g_s[{i}]", f_s)
            check_map(f"g_t[{i}]", f_t)
            losses.append(nst_loss(*match_spatial(f_s, f_t)))
        return losses
