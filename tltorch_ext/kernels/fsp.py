"""FSP in Triton (docs/api_fsp_nst.md): the same ``matrix``/``forward``/``backward`` as
:mod:`tltorch_ext.reference.fsp`, on the tiled product kernel of :mod:`._gram`.

- ``matrix``: G = top · botᵀ / HW written tile by tile;
- ``forward``: each program accumulates its tile of G_s and of G_t (reductions over HW_s and HW_t),
  subtracts them in registers and stores only Σ (G_s − G_t)² of the tile (and the tile of D when
  asked); the tile sums are added afterwards;
- ``backward``: α·g·op(M)·X, one product per input gradient.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._tensors import stat_dtype
from ._gram import Operand, Product, run


def _gram_product(bot: Tensor, top: Tensor, sign: float = 1.0) -> Product:
    """± top · botᵀ / HW."""
    return Product(Operand.of(top), Operand.of(bot).T, sign / top.shape[-1])


def matrix(bot: Tensor, top: Tensor) -> Tensor:
    out = top.new_empty(top.shape[0], top.shape[1], bot.shape[1])
    run([_gram_product(bot, top)], out=out)
    return out


def forward(bot_s: Tensor, top_s: Tensor, bot_t: Tensor, top_t: Tensor,
            keep_diff: bool) -> tuple[Tensor, Tensor]:
    shape = (top_s.shape[0], top_s.shape[1], bot_s.shape[1])
    diff = top_s.new_empty(shape if keep_diff else (0,), dtype=stat_dtype(top_s.dtype))
    total = run([_gram_product(bot_s, top_s), _gram_product(bot_t, top_t, -1.0)],
                out=diff if keep_diff else None, reduce=True)
    return (total / (shape[0] * shape[1] * shape[2])).to(top_s.dtype), diff


def backward(m: Tensor, x: Tensor, transpose_m: bool, alpha: float,
             grad: Optional[Tensor]) -> Tensor:
    op_m = Operand.of(m).T if transpose_m else Operand.of(m)
    out = x.new_empty(x.shape[0], op_m.shape[0], x.shape[2])
    run([Product(op_m, Operand.of(x), alpha)], out=out, grad=grad)
    return out
