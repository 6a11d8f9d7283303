"""Triton kernels of Batch Spectral Shrinkage (docs/api_bss.md); same functions as
:mod:`tltorch_ext.reference.bss`, on (n, b, d) inputs.

Forward, per matrix F of the batch, with A = F (b ≤ d) or A = Fᵀ (b > d), A of shape m × L:
1. ``_gram_kernel``: G = A Aᵀ in float64 (products of float32 values are exact in float64), upper
   32×32 tiles only, mirrored; every tile of every matrix is one program.
2. ``_jacobi_kernel``, one program per matrix, for m ≤ 256: cyclic Jacobi in the parallel
   "circle" ordering: each round rotates m/2 disjoint index pairs at once, and a sweep's m − 1
   rounds meet every pair once. Round r pairs index m − 1 with r and i with (2r − i) mod (m − 1);
   odd m gets one zero padding index, which no rotation ever touches (its coupling is 0). G lives
   in two float64 buffers in global memory (a round reads one and writes the other; they stay in
   L2/L1), since Triton has no explicitly addressed shared memory. Each rotation's tangent goes to
   a log. Sweeps stop when max_{i≠j} |G_ij| ≤ m·eps·max_i G_ii, or after ``MAX_SWEEPS`` (NaN-safe:
   a non-finite G skips the sweeps and gives NaN). Then the k smallest diagonal entries, clamped at
   0, give the penalty, and replaying the logged rotations backwards on the k unit vectors e_i of
   those entries gives the eigenvectors (m·k work per round instead of accumulating all m²).
   For m > 256 the eigenproblem falls back to torch.linalg.eigh on the same float64 G.
Backward: ``_backward_kernel`` forms W = U_kᵀ A one column block of A at a time, then writes
2 g U_k W there (float32 with IEEE products, float64 for float64 input); no decomposition.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._tensors import stat_dtype

MAX_JACOBI = 256  # largest Gram the Jacobi kernel solves; beyond, torch.linalg.eigh
MAX_SWEEPS = 16  # float64 Jacobi needs ≈ log2(m) + 3 sweeps (11 at m = 256)
_GRAM_BLOCK = 32
_TILE_ELEMENTS = 2048  # elements of one row tile in the Jacobi kernel (register budget)


def _side(feature: torch.Tensor):
    """(m, L, stride along m, stride along L) of A = F (b ≤ d) or Fᵀ, for contiguous F."""
    _, rows, cols = feature.shape
    return (rows, cols, cols, 1) if rows <= cols else (cols, rows, 1, cols)


@triton.jit
def _gram_kernel(a_ptr, g_ptr, m, length, tiles, stride_ab, stride_am, stride_al, stride_gb,
                 stride_gm, BLOCK: tl.constexpr, BLOCK_L: tl.constexpr):
    pid = tl.program_id(0)
    batch = pid // (tiles * tiles)
    tile_i = (pid // tiles) % tiles
    tile_j = pid % tiles
    if tile_i <= tile_j:
        ri = tile_i * BLOCK + tl.arange(0, BLOCK)
        rj = tile_j * BLOCK + tl.arange(0, BLOCK)
        base = a_ptr + batch.to(tl.int64) * stride_ab
        acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float64)
        for l0 in range(0, length, BLOCK_L):
            rl = l0 + tl.arange(0, BLOCK_L)
            rows_i = tl.load(base + ri[:, None] * stride_am + rl[None, :] * stride_al,
                             mask=(ri[:, None] < m) & (rl[None, :] < length), other=0.0)
            cols_j = tl.load(base + rj[None, :] * stride_am + rl[:, None] * stride_al,
                             mask=(rj[None, :] < m) & (rl[:, None] < length), other=0.0)
            acc += tl.dot(rows_i.to(tl.float64), cols_j.to(tl.float64))
        out = g_ptr + batch.to(tl.int64) * stride_gb
        inside = (ri[:, None] < m) & (rj[None, :] < m)
        tl.store(out + ri[:, None] * stride_gm + rj[None, :], acc, mask=inside)
        tl.store(out + rj[None, :] * stride_gm + ri[:, None], acc, mask=inside)


@triton.jit
def _partner(i, r, m):
    """Index paired with i in round r of the circle ordering of m (even) indices."""
    return tl.where(i == m - 1, r, tl.where(i == r, m - 1, (2 * r - i + m - 1) % (m - 1)))


@triton.jit
def _pair_slot(i, r, m):
    """Slot 0..m/2−1 of i's pair in round r: 0 for {r, m−1}, q for {r − q, r + q} mod (m − 1)."""
    q = (i - r + m - 1) % (m - 1)
    return tl.where(i == m - 1, 0, tl.minimum(q, m - 1 - q))


@triton.jit
def _tangent(a, b, g):
    """tan of the rotation that zeroes g in [[a, g], [g, b]] (the root of modulus ≤ 1)."""
    theta = (b - a) / (2.0 * tl.where(g == 0, 1.0, g))
    t = tl.where(theta >= 0, 1.0, -1.0) / (tl.abs(theta) + tl.sqrt(theta * theta + 1.0))
    huge = tl.abs(theta) > 1e150  # θ² would overflow
    t = tl.where(huge, 0.5 / tl.where(huge, theta, 1.0), t)
    return tl.where(g == 0, 0.0, t)


@triton.jit
def _scan(buf, m, NP: tl.constexpr, BR: tl.constexpr):
    """(max off-diagonal |G_ij|, max diagonal |G_ii|, number of non-finite entries)."""
    cols = tl.arange(0, NP)
    off = tl.zeros((), dtype=tl.float64)
    diag = tl.zeros((), dtype=tl.float64)
    bad = tl.zeros((), dtype=tl.int32)
    for r0 in range(0, m, BR):
        rows = r0 + tl.arange(0, BR)
        inside = (rows[:, None] < m) & (cols[None, :] < m)
        x = tl.abs(tl.load(buf + rows[:, None] * NP + cols[None, :], mask=inside, other=0.0,
                           cache_modifier=".cg"))
        on_diag = rows[:, None] == cols[None, :]
        off = tl.maximum(off, tl.max(tl.where(on_diag, 0.0, x)))
        diag = tl.maximum(diag, tl.max(tl.where(on_diag, x, 0.0)))
        bad += tl.sum(((x != x) | (x == float("inf"))).to(tl.int32))
    return off, diag, bad


@triton.jit
def _rotate_round(src, dst, log, r, m, NP: tl.constexpr, BR: tl.constexpr):
    """One round: G ← Rᵀ G R for the m/2 rotations of round r (src → dst), tangents to log."""
    cols = tl.arange(0, NP)
    pc = _partner(cols, r, m)
    lo_c = tl.minimum(cols, pc)
    hi_c = tl.maximum(cols, pc)
    col_ok = cols < m
    t_c = _tangent(tl.load(src + lo_c * (NP + 1), mask=col_ok, other=0.0, cache_modifier=".cg"),
                   tl.load(src + hi_c * (NP + 1), mask=col_ok, other=0.0, cache_modifier=".cg"),
                   tl.load(src + lo_c * NP + hi_c, mask=col_ok, other=0.0, cache_modifier=".cg"))
    c_c = 1.0 / tl.sqrt(1.0 + t_c * t_c)
    # R has c on the diagonal, R[lo, hi] = s and R[hi, lo] = −s.
    beta_c = tl.where(cols == lo_c, -t_c * c_c, t_c * c_c)
    for r0 in range(0, m, BR):
        rows = r0 + tl.arange(0, BR)
        row_ok = rows < m
        pr = _partner(rows, r, m)
        lo_r = tl.minimum(rows, pr)
        hi_r = tl.maximum(rows, pr)
        a = tl.load(src + lo_r * (NP + 1), mask=row_ok, other=0.0, cache_modifier=".cg")
        b = tl.load(src + hi_r * (NP + 1), mask=row_ok, other=0.0, cache_modifier=".cg")
        g = tl.load(src + lo_r * NP + hi_r, mask=row_ok, other=0.0, cache_modifier=".cg")
        t_r = _tangent(a, b, g)
        c_r = 1.0 / tl.sqrt(1.0 + t_r * t_r)
        beta_r = tl.where(rows == lo_r, -t_r * c_r, t_r * c_r)
        inside = row_ok[:, None] & col_ok[None, :]
        x = tl.load(src + rows[:, None] * NP + cols[None, :], mask=inside, other=0.0,
                    cache_modifier=".cg")
        x_pc = tl.load(src + rows[:, None] * NP + pc[None, :], mask=inside, other=0.0,
                       cache_modifier=".cg")
        x_pr = tl.load(src + pr[:, None] * NP + cols[None, :], mask=inside, other=0.0,
                       cache_modifier=".cg")
        x_pp = tl.load(src + pr[:, None] * NP + pc[None, :], mask=inside, other=0.0,
                       cache_modifier=".cg")
        new = (c_r[:, None] * (c_c[None, :] * x + beta_c[None, :] * x_pc)
               + beta_r[:, None] * (c_c[None, :] * x_pr + beta_c[None, :] * x_pp))
        # The rotated pair's 2×2 block is exactly diag(a − t g, b + t g).
        pivot = tl.where(rows == lo_r, a - t_r * g, b + t_r * g)
        new = tl.where(cols[None, :] == rows[:, None], pivot[:, None], new)
        new = tl.where(cols[None, :] == pr[:, None], 0.0, new)
        tl.store(dst + rows[:, None] * NP + cols[None, :], new, mask=inside)
        tl.store(log + _pair_slot(rows, r, m), t_r, mask=row_ok & (rows == lo_r))


@triton.jit
def _jacobi_kernel(work_ptr, log_ptr, x_ptr, penalty_ptr, vectors_ptr, n, k, tol,
                   MAX_SWEEPS: tl.constexpr, NP: tl.constexpr, BR: tl.constexpr,
                   KP: tl.constexpr):
    batch = tl.program_id(0).to(tl.int64)
    m = n + n % 2
    half = m // 2
    work = work_ptr + batch * 2 * NP * NP
    log = log_ptr + batch * MAX_SWEEPS * (NP - 1) * (NP // 2)
    xbuf = x_ptr + batch * 2 * NP * KP

    off, diag_max, bad = _scan(work, m, NP, BR)
    sweeps = 0
    current = 0
    while (sweeps < MAX_SWEEPS) & (off > tol * diag_max) & (bad == 0):
        for r in range(0, m - 1):
            _rotate_round(work + current * NP * NP, work + (1 - current) * NP * NP,
                          log + (sweeps * (m - 1) + r) * half, r, m, NP, BR)
            tl.debug_barrier()
            current = 1 - current
        sweeps += 1
        off, diag_max, _ = _scan(work + current * NP * NP, m, NP, BR)

    # Rank the eigenvalues (the diagonal; ties by index) and pick the k smallest.
    g = work + current * NP * NP
    kcols = tl.arange(0, KP)
    penalty = tl.zeros((), dtype=tl.float64)
    for r0 in range(0, m, BR):
        rows = r0 + tl.arange(0, BR)
        d_i = tl.load(g + rows * (NP + 1), mask=rows < n, other=0.0, cache_modifier=".cg")
        rank = tl.zeros((BR,), dtype=tl.int32)
        for c0 in range(0, n, BR):
            js = c0 + tl.arange(0, BR)
            d_j = tl.load(g + js * (NP + 1), mask=js < n, other=0.0, cache_modifier=".cg")
            before = (d_j[None, :] < d_i[:, None]) | (
                (d_j[None, :] == d_i[:, None]) & (js[None, :] < rows[:, None]))
            rank += tl.sum((before & (js[None, :] < n)).to(tl.int32), axis=1)
        chosen = (rows < n) & (rank < k)
        penalty += tl.sum(tl.where(chosen, tl.maximum(d_i, 0.0), 0.0))
        one_hot = chosen[:, None] & (rank[:, None] == kcols[None, :])
        tl.store(xbuf + rows[:, None] * KP + kcols[None, :], one_hot.to(tl.float64),
                 mask=(rows < m)[:, None])
    tl.debug_barrier()

    # Eigenvector of the i-th eigenvalue = R_1 R_2 ⋯ R_T e_i: apply the rotations last first.
    current = 0
    rounds = sweeps * (m - 1)
    for step in range(0, rounds):
        q = rounds - 1 - step
        r = q % (m - 1)
        src = xbuf + current * NP * KP
        dst = xbuf + (1 - current) * NP * KP
        for r0 in range(0, m, BR):
            rows = r0 + tl.arange(0, BR)
            row_ok = rows < m
            pr = _partner(rows, r, m)
            t = tl.load(log + q * half + _pair_slot(rows, r, m), mask=row_ok, other=0.0,
                        cache_modifier=".cg")
            c = 1.0 / tl.sqrt(1.0 + t * t)
            coef = tl.where(rows < pr, t * c, -t * c)
            x = tl.load(src + rows[:, None] * KP + kcols[None, :], mask=row_ok[:, None],
                        other=0.0, cache_modifier=".cg")
            xp = tl.load(src + pr[:, None] * KP + kcols[None, :], mask=row_ok[:, None],
                         other=0.0, cache_modifier=".cg")
            tl.store(dst + rows[:, None] * KP + kcols[None, :], c[:, None] * x + coef[:, None] * xp,
                     mask=row_ok[:, None])
        tl.debug_barrier()
        current = 1 - current

    failed = bad != 0
    penalty = tl.where(failed, float("nan"), penalty)
    if penalty_ptr.dtype.element_ty != tl.float64:
        # Through float32: the interpreter's direct float64 → bfloat16 cast returns wrong bits.
        penalty = penalty.to(tl.float32)
    tl.store(penalty_ptr + batch, penalty.to(penalty_ptr.dtype.element_ty))
    out = vectors_ptr + batch * n * k
    src = xbuf + current * NP * KP
    for r0 in range(0, n, BR):
        rows = r0 + tl.arange(0, BR)
        keep = (rows[:, None] < n) & (kcols[None, :] < k)
        x = tl.load(src + rows[:, None] * KP + kcols[None, :], mask=keep, other=0.0,
                    cache_modifier=".cg")
        x = tl.where(failed, float("nan"), x)
        tl.store(out + rows[:, None] * k + kcols[None, :], x.to(vectors_ptr.dtype.element_ty),
                 mask=keep)


@triton.jit
def _backward_kernel(a_ptr, vectors_ptr, grad_penalty_ptr, out_ptr, m, length, k, blocks_l,
                     stride_ab, stride_am, stride_al, F64: tl.constexpr, BM: tl.constexpr,
                     BL: tl.constexpr, BK: tl.constexpr):
    pid = tl.program_id(0)
    batch = (pid // blocks_l).to(tl.int64)
    rl = (pid % blocks_l) * BL + tl.arange(0, BL)
    acc_ty = tl.float64 if F64 else tl.float32
    a = a_ptr + batch * stride_ab
    out = out_ptr + batch * stride_ab
    vectors = vectors_ptr + batch * m * k
    scale = 2.0 * tl.load(grad_penalty_ptr + batch).to(acc_ty)
    for k0 in range(0, k, BK):
        rk = k0 + tl.arange(0, BK)
        w = tl.zeros((BK, BL), dtype=acc_ty)
        for m0 in range(0, m, BM):
            rm = m0 + tl.arange(0, BM)
            u_t = tl.load(vectors + rm[None, :] * k + rk[:, None],
                          mask=(rm[None, :] < m) & (rk[:, None] < k), other=0.0)
            x = tl.load(a + rm[:, None] * stride_am + rl[None, :] * stride_al,
                        mask=(rm[:, None] < m) & (rl[None, :] < length), other=0.0).to(acc_ty)
            if F64:
                w += tl.dot(u_t, x)
            else:
                w += tl.dot(u_t, x, input_precision="ieee")
        for m0 in range(0, m, BM):
            rm = m0 + tl.arange(0, BM)
            u = tl.load(vectors + rm[:, None] * k + rk[None, :],
                        mask=(rm[:, None] < m) & (rk[None, :] < k), other=0.0)
            if F64:
                grad = tl.dot(u, w)
            else:
                grad = tl.dot(u, w, input_precision="ieee")
            dst = out + rm[:, None] * stride_am + rl[None, :] * stride_al
            inside = (rm[:, None] < m) & (rl[None, :] < length)
            grad = scale * grad + tl.load(dst, mask=inside & (k0 > 0), other=0.0)
            tl.store(dst, grad, mask=inside)
        # The next k-block reloads these tiles: make this block's stores visible to every thread.
        tl.debug_barrier()


def _gram(feature: torch.Tensor, out: torch.Tensor, stride_out_batch: int, stride_out_row: int):
    batch = feature.shape[0]
    m, length, stride_m, stride_l = _side(feature)
    tiles = triton.cdiv(m, _GRAM_BLOCK)
    _gram_kernel[(batch * tiles * tiles,)](
        feature, out, m, length, tiles, feature.stride(0), stride_m, stride_l, stride_out_batch,
        stride_out_row, BLOCK=_GRAM_BLOCK, BLOCK_L=_GRAM_BLOCK)


def _smallest_by_eigh(gram: torch.Tensor, k: int, dtype: torch.dtype, acc: torch.dtype):
    """Fallback for m > MAX_JACOBI: the k smallest eigenpairs by torch.linalg.eigh."""
    finite = torch.isfinite(gram).flatten(1).all(1)
    values, vectors = torch.linalg.eigh(torch.where(finite[:, None, None], gram, 0))
    penalty = values[:, :k].clamp(min=0).sum(-1)
    nan = torch.full((), float("nan"), dtype=gram.dtype, device=gram.device)
    penalty = torch.where(finite, penalty, nan)
    vectors = torch.where(finite[:, None, None], vectors[:, :, :k], nan)
    return penalty.to(dtype), vectors.to(acc).contiguous()


def forward(feature: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    feature = feature.contiguous()
    batch = feature.shape[0]
    m = min(feature.shape[1:])
    acc = stat_dtype(feature.dtype)
    device = feature.device
    penalty = torch.empty(batch, dtype=feature.dtype, device=device)
    vectors = torch.empty((batch, m, k), dtype=acc, device=device)
    if batch == 0:
        return penalty, vectors
    if m > MAX_JACOBI:
        gram = torch.empty((batch, m, m), dtype=torch.float64, device=device)
        _gram(feature, gram, m * m, m)
        return _smallest_by_eigh(gram, k, feature.dtype, acc)
    padded = triton.next_power_of_2(m + m % 2)
    kp = triton.next_power_of_2(k)
    work = torch.zeros((batch, 2, padded, padded), dtype=torch.float64, device=device)
    _gram(feature, work, 2 * padded * padded, padded)
    log = torch.empty((batch, MAX_SWEEPS * (padded - 1) * (padded // 2)), dtype=torch.float64,
                      device=device)
    xbuf = torch.empty((batch, 2, padded, kp), dtype=torch.float64, device=device)
    rows_per_tile = max(1, min(padded, _TILE_ELEMENTS // max(padded, kp)))
    _jacobi_kernel[(batch,)](
        work, log, xbuf, penalty, vectors, m, k, (m + m % 2) * torch.finfo(torch.float64).eps,
        MAX_SWEEPS=MAX_SWEEPS, NP=padded, BR=rows_per_tile, KP=kp, num_warps=8)
    return penalty, vectors


def backward(grad_penalty: torch.Tensor, feature: torch.Tensor,
             vectors: torch.Tensor) -> torch.Tensor:
    feature = feature.contiguous()
    batch = feature.shape[0]
    m, length, stride_m, stride_l = _side(feature)
    k = vectors.shape[-1]
    acc = vectors.dtype
    grad = torch.empty(feature.shape, dtype=acc, device=feature.device)
    if grad.numel() == 0:
        return grad.to(feature.dtype)
    block_l = 64
    blocks_l = triton.cdiv(length, block_l)
    _backward_kernel[(batch * blocks_l,)](
        feature, vectors.contiguous(), grad_penalty.contiguous(), grad, m, length, k, blocks_l,
        feature.stride(0), stride_m, stride_l, F64=acc == torch.float64, BM=32, BL=block_l,
        BK=max(16, min(64, triton.next_power_of_2(k))))
    return grad.to(feature.dtype)
