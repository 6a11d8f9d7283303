"""Flow of solution procedure (FSP) distillation (docs/api_fsp_nst.md); the fused op is
:func:`tltorch_ext.ops.fsp_loss`."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..ops.fsp import fsp_loss
from ._spatial import check_map, match_spatial

__all__ = ["FSP"]


def _as_shapes(name: str, shapes) -> list[tuple[int, int, int, int]]:
    if not isinstance(shapes, Sequence) or len(shapes) < 2:
        raise ValueError(
            f"{name} must be a list of at least two (B, C, H, W) shapes, got {shapes!r}")
    out = []
    for shape in shapes:
        shape = tuple(shape)
        if len(shape) != 4 or not all(isinstance(n, int) and n > 0 for n in shape):
            raise ValueError(
                f"{name} must hold (B, C, H, W) shapes of positive ints, got {shape!r}")
        out.append(shape)
    return out


class FSP(nn.Module):
    r"""FSP loss between the student's and the teacher's feature maps (Yim et al., 2017).

    For each consecutive pair (bot, top) = (g[i], g[i+1]) of one network, the larger map is first
    average-pooled (adaptively) to the smaller spatial size; with the maps flattened to
    (B, C, HW), the FSP matrix is G = top · botᵀ / HW ∈ ℝ^{B × C_top × C_bot}, and the loss of pair
    i is mean((G_s − G_t)²) over its B·C_top·C_bot entries. The fused op never stores G_s or G_t.

    Args:
        s_shapes: the (B, C, H, W) shapes of the student's maps g_s, at least two.
        t_shapes: the teacher's; the channel counts must match the student's layer by layer.

    Shape:
        forward(g_s, g_t): two lists of (B, C_i, H_i, W_i) maps as declared → list of
        len(g_s) − 1 scalar losses. Gradients reach whichever maps require them.
    """

    def __init__(self, s_shapes, t_shapes):
        super().__init__()
        self.s_shapes = _as_shapes("s_shapes", s_shapes)
        self.t_shapes = _as_shapes("t_shapes", t_shapes)
        if len(self.s_shapes) != len(self.t_shapes):
            raise ValueError(f"s_shapes and t_shapes must have the same length, got "
                             f"{len(self.s_shapes)} and {len(self.t_shapes)}")
        for i, (s, t) in enumerate(zip(self.s_shapes, self.t_shapes)):
            if s[1] != t[1]:
                raise ValueError(f"layer {i}: the student has {s[1]} channels and the teacher "
                                 f"{t[1]}; FSP needs equal channel counts layer by layer")

    def extra_repr(self) -> str:
        return f"channels={[s[1] for s in self.s_shapes]}"

    def _check(self, name: str, maps, shapes) -> None:
        if not isinstance(maps, Sequence):
            raise TypeError(f"{name} must be a list of feature maps, got {type(maps).__name__}")
        if len(maps) != len(shapes):
            raise ValueError(f"{name} must hold {len(shapes)} feature maps (one per declared "
                             f"shape), got {len(maps)}")
        for i, (t, shape) in enumerate(zip(maps, shapes)):
            check_map(f"{name}[{i}]", t)
            if t.shape[1] != shape[1]:
                raise ValueError(f"{name}[{i}] has {t.shape[1]} channels, but {shape[1]} were "
                                 f"declared (shape {tuple(t.shape)})")

    def forward(self, g_s: Sequence[torch.Tensor],
                g_t: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self._check("g_s", g_s, self.s_shapes)
        self._check("g_t", g_t, self.t_shapes)
        losses = []
        for i in range(len(g_s) - 1):
            bot_s, top_s = match_spatial(g_s[i], g_s[i + 1])
            bot_t, top_t = match_spatial(g_t[i], g_t[i + 1])
            losses.append(fsp_loss(bot_s, top_s, bot_t, top_t))
        return losses
