"""Batched matrix products with fused row normalization, shared by the FSP and NST kernels.

One Triton kernel computes, per sample b and per BLOCK_M × BLOCK_N output tile,

    Y_b = Σ_p coef_p · A_{p,b} · B_{p,b}        (one or two products p, each with its own K)

where every operand is a strided view of a (B, rows, cols) tensor (so a transpose is just swapped
strides) whose channel axis may be divided by max(norm, ε) on load: the L2 normalization of NST,
applied to the output tile when the channel axis is M or N and to the operand when it is K.
Epilogues (compile-time):
- WRITE: store g·Y (g the optional upstream gradient scalar) in ``out``'s dtype;
- REDUCE: store Σ Y² of the tile in a (B, tiles) buffer of partial sums; with SYMMETRIC (Y known to
  be symmetric) only tiles on or above the diagonal compute, the others counted twice.
So a Gram is never held beyond one tile in the forward, and the backward products reuse the same
kernel. Accumulation is float32 (float64 for float64); float16/bfloat16 operands that need no
scaling on K go to ``tl.dot`` as they are (float32 accumulation), float32 uses IEEE products unless
``torch.backends.cuda.matmul.allow_tf32`` is set.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from .._tensors import stat_dtype

EPS = 1e-12
# Scale placement codes (constexpr): on A none / M / K, on B none / K / N.
_NONE, _A_ON_M, _A_ON_K = 0, 1, 2
_B_ON_K, _B_ON_N = 1, 2

_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
              torch.float64: tl.float64}


@dataclasses.dataclass(frozen=True)
class Operand:
    """Per sample b, X_b[i, j] = data[b·s_b + i·s_i + j·s_j]; when ``norms`` (B, channels) is
    given, the channel axis (0: rows, 1: columns) is divided by max(norm, ε)."""

    data: torch.Tensor
    strides: tuple[int, int, int]
    shape: tuple[int, int]
    norms: Optional[torch.Tensor] = None
    channel_axis: int = 0

    @staticmethod
    def of(t: torch.Tensor, norms: Optional[torch.Tensor] = None) -> "Operand":
        """A (B, C, L) tensor as per-sample C × L matrices (channels on the rows)."""
        return Operand(t, tuple(t.stride()), (t.shape[1], t.shape[2]),
                       None if norms is None else norms.contiguous(), 0)

    @property
    def T(self) -> "Operand":
        s_b, s_i, s_j = self.strides
        return Operand(self.data, (s_b, s_j, s_i), self.shape[::-1], self.norms,
                       1 - self.channel_axis)


@dataclasses.dataclass(frozen=True)
class Product:
    a: Operand
    b: Operand
    coef: float = 1.0


def _config(dtype: torch.dtype, device: torch.device) -> dict:
    if device.type != "cuda":  # the interpreter: the smallest tiles tl.dot accepts
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=1)
    if dtype == torch.float64:
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, num_warps=4)
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4)


@triton.jit
def _scale(norm_ptr, idx, n, eps, ACC: tl.constexpr):
    norm = tl.load(norm_ptr + idx, mask=idx < n, other=1.0).to(ACC)
    return 1.0 / tl.maximum(norm, eps)


@triton.jit
def _product(b, offs_m, offs_n, M, N, eps,
             a_ptr, a_sb, a_sm, a_sk, an_ptr, an_sb, b_ptr, b_sb, b_sk, b_sn, bn_ptr, bn_sb, K,
             coef, k_end,
             A_SCALE: tl.constexpr, B_SCALE: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr,
             PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_K: tl.constexpr):
    """coef · A_b[offs_m, :] · B_b[:, offs_n] (zero outside M × N), K looped up to k_end."""
    b64 = b.to(tl.int64)
    a_base = a_ptr + b64 * a_sb
    b_base = b_ptr + b64 * b_sb
    tile = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_base + offs_m[:, None] * a_sm + offs_k[None, :] * a_sk,
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        bt = tl.load(b_base + offs_k[:, None] * b_sk + offs_n[None, :] * b_sn,
                     mask=(offs_k[:, None] < K) & (offs_n[None, :] < N), other=0.0)
        if A_SCALE == 2:
            a = a.to(ACC) * _scale(an_ptr + b64 * an_sb, offs_k, K, eps, ACC)[None, :]
        if B_SCALE == 1:
            bt = bt.to(ACC) * _scale(bn_ptr + b64 * bn_sb, offs_k, K, eps, ACC)[:, None]
        tile = tl.dot(a.to(DOT), bt.to(DOT), tile, input_precision=PRECISION)
    if A_SCALE == 1:
        tile = tile * _scale(an_ptr + b64 * an_sb, offs_m, M, eps, ACC)[:, None]
    if B_SCALE == 2:
        tile = tile * _scale(bn_ptr + b64 * bn_sb, offs_n, N, eps, ACC)[None, :]
    return tile * coef


@triton.jit
def _products_kernel(
    out_ptr, out_sb, out_sm, out_sn, partial_ptr, grad_ptr, M, N, eps,
    a1_ptr, a1_sb, a1_sm, a1_sk, a1n_ptr, a1n_sb, b1_ptr, b1_sb, b1_sk, b1_sn, b1n_ptr, b1n_sb,
    K1, coef1,
    a2_ptr, a2_sb, a2_sm, a2_sk, a2n_ptr, a2n_sb, b2_ptr, b2_sb, b2_sk, b2_sn, b2n_ptr, b2n_sb,
    K2, coef2,
    A1_SCALE: tl.constexpr, B1_SCALE: tl.constexpr, A2_SCALE: tl.constexpr,
    B2_SCALE: tl.constexpr, TWO: tl.constexpr, WRITE: tl.constexpr, REDUCE: tl.constexpr,
    SYMMETRIC: tl.constexpr, HAS_GRAD: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # One program per (sample, tile), on one grid axis (the others are limited to 65535).
    program = tl.program_id(0)
    tiles_n = tl.cdiv(N, BLOCK_N)
    tiles = tl.cdiv(M, BLOCK_M) * tiles_n
    b = program // tiles
    tile_id = program - b * tiles
    pid_m = tile_id // tiles_n
    pid_n = tile_id - pid_m * tiles_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Below the diagonal of a symmetric result nothing is computed (empty K loops).
    k_end1, k_end2 = K1, K2
    if SYMMETRIC:
        k_end1 = tl.where(pid_m <= pid_n, K1, 0)
        k_end2 = tl.where(pid_m <= pid_n, K2, 0)
    y = _product(b, offs_m, offs_n, M, N, eps,
                 a1_ptr, a1_sb, a1_sm, a1_sk, a1n_ptr, a1n_sb,
                 b1_ptr, b1_sb, b1_sk, b1_sn, b1n_ptr, b1n_sb, K1, coef1, k_end1,
                 A1_SCALE, B1_SCALE, DOT, ACC, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    if TWO:
        y += _product(b, offs_m, offs_n, M, N, eps,
                      a2_ptr, a2_sb, a2_sm, a2_sk, a2n_ptr, a2n_sb,
                      b2_ptr, b2_sb, b2_sk, b2_sn, b2n_ptr, b2n_sb, K2, coef2, k_end2,
                      A2_SCALE, B2_SCALE, DOT, ACC, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    if REDUCE:
        total = tl.sum(tl.sum(y * y, axis=1), axis=0)
        if SYMMETRIC:
            total = total * tl.where(pid_m < pid_n, 2.0, 1.0).to(ACC)
        tl.store(partial_ptr + program, total)
    if WRITE:
        if HAS_GRAD:
            y = y * tl.load(grad_ptr).to(ACC)
        ptrs = (out_ptr + b.to(tl.int64) * out_sb + offs_m[:, None] * out_sm
                + offs_n[None, :] * out_sn)
        tl.store(ptrs, y.to(out_ptr.dtype.element_ty),
                 mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def _operand_args(x: Operand, is_a: bool, dummy: torch.Tensor):
    s_b, s_i, s_j = x.strides
    if x.norms is None:
        code = _NONE
        norms, n_sb = dummy, 0
    else:
        # A: channel axis 0 is M, 1 is K; B: channel axis 0 is K, 1 is N.
        code = (_A_ON_M if x.channel_axis == 0 else _A_ON_K) if is_a else (
            _B_ON_K if x.channel_axis == 0 else _B_ON_N)
        norms, n_sb = x.norms, x.norms.stride(0)
    return (x.data, s_b, s_i, s_j, norms, n_sb), code


def _dot_dtype(products: Sequence[Product], acc: torch.dtype, device: torch.device):
    operands = [x for p in products for x in (p.a, p.b)]
    dtypes = {x.data.dtype for x in operands}
    # Triton's interpreter misreads 16-bit float dot operands: it gets them widened.
    if device.type == "cuda" and dtypes in ({torch.float16}, {torch.bfloat16}):
        scaled_on_k = any(p.a.norms is not None and p.a.channel_axis == 1
                          or p.b.norms is not None and p.b.channel_axis == 0 for p in products)
        if not scaled_on_k:
            return _TL_DTYPES[dtypes.pop()]
    return _TL_DTYPES[acc]


def run(products: Sequence[Product], *, out: Optional[torch.Tensor] = None,
        reduce: bool = False, symmetric: bool = False,
        grad: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """Y = Σ_p coef_p A_p B_p per sample; writes g·Y into ``out`` (B, M, N) when given and
    returns Σ_b Σ Y² in the accumulation dtype when ``reduce``."""
    if not 1 <= len(products) <= 2:
        raise ValueError(f"one or two products, got {len(products)}")
    first = products[0]
    batch = first.a.data.shape[0]
    m, n = first.a.shape[0], first.b.shape[1]
    for p in products:
        if p.a.shape[0] != m or p.b.shape[1] != n or p.a.shape[1] != p.b.shape[0]:
            raise ValueError(f"incompatible product shapes {p.a.shape} · {p.b.shape} for {m}×{n}")
    data = first.a.data
    acc = stat_dtype(data.dtype)
    cfg = _config(acc, data.device)
    tiles = triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"])
    dummy = torch.empty(1, device=data.device, dtype=acc)
    partial = torch.empty(batch, tiles, device=data.device, dtype=acc) if reduce else dummy
    out_args = (out, *out.stride()) if out is not None else (dummy, 0, 0, 0)
    args, codes = [], []
    for p in (products[0], products[-1]):  # the second slot repeats the first when unused
        a_args, a_code = _operand_args(p.a, True, dummy)
        b_args, b_code = _operand_args(p.b, False, dummy)
        args += [*a_args, *b_args, p.a.shape[1], float(p.coef)]
        codes += [a_code, b_code]
    dot = _dot_dtype(products, acc, data.device)
    tf32 = dot == tl.float32 and torch.backends.cuda.matmul.allow_tf32
    _products_kernel[(batch * tiles,)](
        *out_args, partial, grad if grad is not None else dummy, m, n, EPS, *args,
        A1_SCALE=codes[0], B1_SCALE=codes[1], A2_SCALE=codes[2], B2_SCALE=codes[3],
        TWO=len(products) == 2, WRITE=out is not None, REDUCE=reduce, SYMMETRIC=symmetric,
        HAS_GRAD=grad is not None, DOT=dot, ACC=_TL_DTYPES[acc],
        PRECISION="tf32" if tf32 else "ieee", **cfg)
    return partial.sum() if reduce else None
