"""NST in Triton (docs/api_fsp_nst.md): the same ``forward``/``backward`` as
:mod:`tltorch_ext.reference.nst`, on the tiled product kernel of :mod:`._gram`.

The row norms come from one small kernel; everything else reads the raw maps and divides each
channel by max(norm, ε) as it loads (normalization fused into the Gram tiles).

- forward, spatial side: each program accumulates a tile of SᵀS/C_s − TᵀT/C_t (reductions over the
  channels) and stores only its Σ of squares; the result is symmetric, so only tiles on or above the
  diagonal compute. Channel side: three such reductions, of S Sᵀ/C_s, T Tᵀ/C_t (symmetric) and
  S Tᵀ/√(C_s C_t).
- backward: recomputes P_s = SᵀS and E = P_s/C_s − TᵀT/C_t (spatial), or S Sᵀ and S Tᵀ (channel),
  per sample (O(B·min(C, HW)²)), applies them to S and T, then one row kernel takes the gradient
  through the normalization.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._tensors import stat_dtype
from ._gram import EPS, Operand, Product, run

_ROW_BLOCK = 1024


@triton.jit
def _row_norm_kernel(f_ptr, f_sb, f_sc, f_sl, out_ptr, C, L, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    b = row // C
    base = f_ptr + b.to(tl.int64) * f_sb + (row - b * C).to(tl.int64) * f_sc
    squares = tl.zeros((BLOCK,), dtype=out_ptr.dtype.element_ty)
    for l0 in range(0, L, BLOCK):
        offs = l0 + tl.arange(0, BLOCK)
        x = tl.load(base + offs * f_sl, mask=offs < L, other=0.0).to(out_ptr.dtype.element_ty)
        squares += x * x
    tl.store(out_ptr + row, tl.sqrt(tl.sum(squares, axis=0)))


@triton.jit
def _normalize_backward_kernel(ds_ptr, f_ptr, f_sb, f_sc, f_sl, norm_ptr, out_ptr, C, L, eps,
                               BLOCK: tl.constexpr):
    """df = (ds − s·⟨s, ds⟩)/max(‖f‖, ε) for one row (the radial term only where ‖f‖ > ε)."""
    row = tl.program_id(0)
    b = row // C
    f_base = f_ptr + b.to(tl.int64) * f_sb + (row - b * C).to(tl.int64) * f_sc
    ds_base = ds_ptr + row.to(tl.int64) * L
    out_base = out_ptr + row.to(tl.int64) * L
    norm = tl.load(norm_ptr + row)
    inv = 1.0 / tl.maximum(norm, eps)
    dots = tl.zeros((BLOCK,), dtype=norm.dtype)
    for l0 in range(0, L, BLOCK):
        offs = l0 + tl.arange(0, BLOCK)
        s = tl.load(f_base + offs * f_sl, mask=offs < L, other=0.0).to(norm.dtype) * inv
        dots += s * tl.load(ds_base + offs, mask=offs < L, other=0.0)
    radial = tl.where(norm > eps, tl.sum(dots, axis=0), 0.0)
    for l0 in range(0, L, BLOCK):
        offs = l0 + tl.arange(0, BLOCK)
        s = tl.load(f_base + offs * f_sl, mask=offs < L, other=0.0).to(norm.dtype) * inv
        ds = tl.load(ds_base + offs, mask=offs < L, other=0.0)
        tl.store(out_base + offs, ((ds - s * radial) * inv).to(out_ptr.dtype.element_ty),
                 mask=offs < L)


def _row_block(length: int) -> int:
    return min(_ROW_BLOCK, triton.next_power_of_2(length))


def _row_norms(f: Tensor) -> Tensor:
    out = f.new_empty(f.shape[:2], dtype=stat_dtype(f.dtype))
    _row_norm_kernel[(f.shape[0] * f.shape[1],)](f, *f.stride(), out, f.shape[1], f.shape[2],
                                                 BLOCK=_row_block(f.shape[2]))
    return out


def _normalize_backward(ds: Tensor, f: Tensor, norm: Tensor) -> Tensor:
    # In place when the gradient has the accumulation dtype (each row is read before written).
    out = ds if f.dtype == ds.dtype else torch.empty_like(ds, dtype=f.dtype)
    _normalize_backward_kernel[(f.shape[0] * f.shape[1],)](
        ds, f, *f.stride(), norm, out, f.shape[1], f.shape[2], EPS,
        BLOCK=_row_block(f.shape[2]))
    return out


def forward(f_s: Tensor, f_t: Tensor, spatial: bool) -> tuple[Tensor, Tensor, Tensor]:
    norm_s, norm_t = _row_norms(f_s), _row_norms(f_t)
    s, t = Operand.of(f_s, norm_s), Operand.of(f_t, norm_t)
    c_s, c_t = f_s.shape[1], f_t.shape[1]
    if spatial:
        total = run([Product(s.T, s, 1.0 / c_s), Product(t.T, t, -1.0 / c_t)],
                    reduce=True, symmetric=True)
    else:
        total = (run([Product(t, t.T, 1.0 / c_t)], reduce=True, symmetric=True)
                 + run([Product(s, s.T, 1.0 / c_s)], reduce=True, symmetric=True)
                 - 2 * run([Product(s, t.T, 1.0 / math.sqrt(c_s * c_t))], reduce=True))
    return (total / f_s.shape[0]).to(f_s.dtype), norm_s, norm_t


def backward(grad: Tensor, f_s: Tensor, f_t: Tensor, norm_s: Tensor, norm_t: Tensor,
             spatial: bool, need_s: bool, need_t: bool) -> tuple[Tensor, Tensor]:
    s, t = Operand.of(f_s, norm_s), Operand.of(f_t, norm_t)
    batch, c_s, c_t, hw = f_s.shape[0], f_s.shape[1], f_t.shape[1], f_s.shape[2]
    acc = norm_s.dtype
    k = 4.0 / batch
    ds = f_s.new_empty(f_s.shape, dtype=acc) if need_s else None
    dt = f_t.new_empty(f_t.shape, dtype=acc) if need_t else None
    if spatial:
        p_s = f_s.new_empty(batch, hw, hw, dtype=acc)
        run([Product(s.T, s)], out=p_s)
        if need_s:
            e = torch.empty_like(p_s)
            run([Product(t.T, t, -1.0 / c_t)], out=e)
            e.add_(p_s, alpha=1.0 / c_s)
            run([Product(s, Operand.of(e), k / c_s)], out=ds, grad=grad)
        if need_t:
            run([Product(t, Operand.of(p_s), -k / (c_s * c_t))], out=dt, grad=grad)
    else:
        k_st = f_s.new_empty(batch, c_s, c_t, dtype=acc)
        run([Product(s, t.T)], out=k_st)
        if need_s:
            k_ss = f_s.new_empty(batch, c_s, c_s, dtype=acc)
            run([Product(s, s.T)], out=k_ss)
            run([Product(Operand.of(k_ss), s, k / c_s**2),
                 Product(Operand.of(k_st), t, -k / (c_s * c_t))], out=ds, grad=grad)
        if need_t:
            run([Product(Operand.of(k_st).T, s, -k / (c_s * c_t))], out=dt, grad=grad)
    empty = f_s.new_empty(0)
    return (_normalize_backward(ds, f_s, norm_s) if need_s else empty,
            _normalize_backward(dt, f_t, norm_t) if need_t else empty)
