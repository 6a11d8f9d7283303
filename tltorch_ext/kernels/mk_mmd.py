"""Triton kernels of the multi-kernel MMD (docs/api_mmd.md); same functions as
:mod:`tltorch_ext.reference.mk_mmd`.

The launcher packs every layer's centred rows zc = z − c side by side in one (n, Σd) buffer in
the accumulation dtype, with their squared norms q (L, n): one copy of the input, which keeps the
Gram trick d = q_i + q_j − 2 zc_i·zc_j accurate under a common offset. Then:
- quadratic forward: one program per (I, J) tile with I ≤ J: per layer the tile's dot products
  (``tl.dot`` over column chunks), its distances and Σ_k e^{−γ_k d}, their product over layers,
  the weights, reduced to one number (doubled off the diagonal);
- quadratic backward: one program per (row block I, layer l): for every column block J it
  recomputes the kernels, forms A = (W + Wᵀ) ∘ ∂K/∂d^l for the tile and adds −A·zc_J into the
  gradient rows of block I, which only this program writes; at the end
  grad = 2g(rowsum(A)·zc_I − Σ_J A·zc_J);
- linear: the 4B pairs (s_i, s_i'), (t_i, t_i'), (s_i, t_i'), (s_i', t_i) from direct distances;
  backward gives each row its four partners' terms.
Nothing of size n² is stored. Accumulation float32 with IEEE products (float64 for float64).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._tensors import stat_dtype

_ESTIMATE_CODES = {"biased": 0, "unbiased": 1, "linear": 2}


def _config(device: torch.device) -> tuple[int, int]:
    """(rows per tile, columns per chunk): the interpreter gets the smallest tl.dot accepts."""
    return (16, 16) if device.type != "cuda" else (64, 32)


def _weights(batch: int, estimate: str, kernel_product: float) -> tuple[float, float, float]:
    """(same, cross, diagonal constant), as csrc/mk_mmd.h."""
    if estimate == "biased":
        return 1.0 / batch**2, -1.0 / batch**2, 2.0 * kernel_product / batch
    if estimate == "unbiased":
        return 1.0 / (batch * (batch - 1)), -1.0 / batch**2, 0.0
    return 1.0 / batch, (-0.5 if batch == 2 else -1.0) / batch, 0.0


@triton.jit
def _tile_distances(z_ptr, q_ptr, rows_i, rows_j, n, stride, col0, dim, layer,
                    ACC: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """d_ij of one layer for the rows_i × rows_j tile (Gram trick on centred rows)."""
    dots = tl.zeros((BLOCK, BLOCK), dtype=ACC)
    for k0 in range(0, dim, BLOCK_D):
        cols = k0 + tl.arange(0, BLOCK_D)
        a = tl.load(z_ptr + rows_i[:, None] * stride + col0 + cols[None, :],
                    mask=(rows_i[:, None] < n) & (cols[None, :] < dim), other=0.0)
        b = tl.load(z_ptr + rows_j[None, :] * stride + col0 + cols[:, None],
                    mask=(rows_j[None, :] < n) & (cols[:, None] < dim), other=0.0)
        dots = tl.dot(a, b, dots, input_precision="ieee")
    q_i = tl.load(q_ptr + layer * n + rows_i, mask=rows_i < n, other=0.0)
    q_j = tl.load(q_ptr + layer * n + rows_j, mask=rows_j < n, other=0.0)
    d = q_i[:, None] + q_j[None, :] - 2.0 * dots
    return tl.where(d < 0.0, 0.0, d)  # clamped at 0, NaN kept


@triton.jit
def _kernel_sums(d, gammas_ptr, first, last, ACC: tl.constexpr):
    """(Σ_k e^{−γ_k d}, Σ_k γ_k e^{−γ_k d}) over the layer's kernels first..last."""
    s = tl.zeros(d.shape, dtype=ACC)
    t = tl.zeros(d.shape, dtype=ACC)
    for k in range(first, last):
        gamma = tl.load(gammas_ptr + k).to(ACC)
        e = tl.exp(-gamma * d)
        s += e
        t += gamma * e
    return s, t


@triton.jit
def _layer_kernel_sums(z_ptr, q_ptr, offsets_ptr, kernels_ptr, gammas_ptr, rows_i, rows_j, n,
                       stride, layer, ACC: tl.constexpr, BLOCK: tl.constexpr,
                       BLOCK_D: tl.constexpr):
    """(S, T) of one layer for the rows_i × rows_j tile: its distances, then its kernels' sums."""
    col0 = tl.load(offsets_ptr + layer)
    dim = tl.load(offsets_ptr + layer + 1) - col0
    d = _tile_distances(z_ptr, q_ptr, rows_i, rows_j, n, stride, col0, dim, layer, ACC, BLOCK,
                        BLOCK_D)
    return _kernel_sums(d, gammas_ptr, tl.load(kernels_ptr + layer),
                        tl.load(kernels_ptr + layer + 1), ACC)


@triton.jit
def _pair_weights(rows_i, rows_j, n, batch, weights_ptr):
    """W_ij of the quadratic estimates, 0 on the diagonal and outside the matrix."""
    w_same = tl.load(weights_ptr)
    w_cross = tl.load(weights_ptr + 1)
    same = (rows_i[:, None] < batch) == (rows_j[None, :] < batch)
    valid = (rows_i[:, None] < n) & (rows_j[None, :] < n) & (rows_i[:, None] != rows_j[None, :])
    return tl.where(valid, tl.where(same, w_same, w_cross), 0.0)


@triton.jit
def _quadratic_forward_kernel(z_ptr, q_ptr, offsets_ptr, kernels_ptr, gammas_ptr, partial_ptr,
                              n, batch, stride, layers, tiles, weights_ptr,
                              ACC: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    tile_i = pid // tiles
    tile_j = pid - tile_i * tiles
    total = tl.zeros((), dtype=ACC)
    if tile_i <= tile_j:
        rows_i = tile_i * BLOCK + tl.arange(0, BLOCK)
        rows_j = tile_j * BLOCK + tl.arange(0, BLOCK)
        k = tl.full((BLOCK, BLOCK), 1.0, dtype=ACC)
        for layer in range(layers):
            s, _ = _layer_kernel_sums(z_ptr, q_ptr, offsets_ptr, kernels_ptr, gammas_ptr, rows_i,
                                      rows_j, n, stride, layer, ACC, BLOCK, BLOCK_D)
            k = k * s
        w = _pair_weights(rows_i, rows_j, n, batch, weights_ptr).to(ACC)
        total = tl.sum(tl.sum(w * k, axis=1), axis=0) * tl.where(tile_i < tile_j, 2.0, 1.0)
    tl.store(partial_ptr + pid, total)


@triton.jit
def _quadratic_backward_kernel(z_ptr, q_ptr, offsets_ptr, kernels_ptr, gammas_ptr, grad_ptr,
                               out_ptr, n, batch, stride, layers, tiles, weights_ptr,
                               ACC: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    tile_i = pid // layers
    target = pid - tile_i * layers
    rows_i = tile_i * BLOCK + tl.arange(0, BLOCK)
    t_col0 = tl.load(offsets_ptr + target)
    t_dim = tl.load(offsets_ptr + target + 1) - t_col0
    row_sums = tl.zeros((BLOCK,), dtype=ACC)
    for tile_j in range(0, tiles):
        rows_j = tile_j * BLOCK + tl.arange(0, BLOCK)
        # ∂K/∂d^target = −T^target · Π_{other layers} S.
        slope = tl.full((BLOCK, BLOCK), 1.0, dtype=ACC)
        for layer in range(layers):
            s, t = _layer_kernel_sums(z_ptr, q_ptr, offsets_ptr, kernels_ptr, gammas_ptr, rows_i,
                                      rows_j, n, stride, layer, ACC, BLOCK, BLOCK_D)
            slope = slope * tl.where(layer == target, t, s)
        a = -2.0 * _pair_weights(rows_i, rows_j, n, batch, weights_ptr).to(ACC) * slope
        row_sums += tl.sum(a, axis=1)
        for k0 in range(0, t_dim, BLOCK_D):
            cols = t_col0 + k0 + tl.arange(0, BLOCK_D)
            col_ok = (k0 + tl.arange(0, BLOCK_D)) < t_dim
            zc_j = tl.load(z_ptr + rows_j[:, None] * stride + cols[None, :],
                           mask=(rows_j[:, None] < n) & col_ok[None, :], other=0.0)
            out = out_ptr + rows_i[:, None] * stride + cols[None, :]
            inside = (rows_i[:, None] < n) & col_ok[None, :]
            acc = tl.load(out, mask=inside & (tile_j > 0), other=0.0)
            tl.store(out, acc - tl.dot(a, zc_j, input_precision="ieee"), mask=inside)
        # The next column block reloads these rows: make this block's stores visible.
        tl.debug_barrier()
    scale = 2.0 * tl.load(grad_ptr).to(ACC)
    for k0 in range(0, t_dim, BLOCK_D):
        cols = t_col0 + k0 + tl.arange(0, BLOCK_D)
        inside = (rows_i[:, None] < n) & ((k0 + tl.arange(0, BLOCK_D)) < t_dim)[None, :]
        zc_i = tl.load(z_ptr + rows_i[:, None] * stride + cols[None, :], mask=inside, other=0.0)
        out = out_ptr + rows_i[:, None] * stride + cols[None, :]
        acc = tl.load(out, mask=inside, other=0.0)
        tl.store(out, scale * (row_sums[:, None] * zc_i + acc), mask=inside)


@triton.jit
def _pair_kernel(z_ptr, offsets_ptr, kernels_ptr, gammas_ptr, rows_a, rows_b, ok, stride,
                 layers, target, ACC: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per pair (a, b): K = Π_l S^l, or with ``target`` ≥ 0 the slope T^target Π_{l≠target} S^l,
    from the direct distances ‖zc_a − zc_b‖²."""
    value = tl.full((BLOCK,), 1.0, dtype=ACC)
    for layer in range(layers):
        col0 = tl.load(offsets_ptr + layer)
        dim = tl.load(offsets_ptr + layer + 1) - col0
        d = tl.zeros((BLOCK,), dtype=ACC)
        for k0 in range(0, dim, BLOCK_D):
            cols = k0 + tl.arange(0, BLOCK_D)
            inside = ok[:, None] & (cols[None, :] < dim)
            x = tl.load(z_ptr + rows_a[:, None] * stride + col0 + cols[None, :], mask=inside,
                        other=0.0)
            y = tl.load(z_ptr + rows_b[:, None] * stride + col0 + cols[None, :], mask=inside,
                        other=0.0)
            d += tl.sum((x - y) * (x - y), axis=1)
        s, t = _kernel_sums(d, gammas_ptr, tl.load(kernels_ptr + layer),
                            tl.load(kernels_ptr + layer + 1), ACC)
        value = value * tl.where(layer == target, t, s)
    return value


@triton.jit
def _linear_forward_kernel(z_ptr, offsets_ptr, kernels_ptr, gammas_ptr, partial_ptr, batch,
                           stride, layers, weights_ptr, ACC: tl.constexpr,
                           BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    w_same = tl.load(weights_ptr)
    w_cross = tl.load(weights_ptr + 1)
    s = pid * BLOCK + tl.arange(0, BLOCK)
    ok = s < batch
    s_next = (s + 1) % batch
    same = (_pair_kernel(z_ptr, offsets_ptr, kernels_ptr, gammas_ptr, s, s_next, ok, stride,
                         layers, -1, ACC, BLOCK, BLOCK_D)
            + _pair_kernel(z_ptr, offsets_ptr, kernels_ptr, gammas_ptr, s + batch,
                           s_next + batch, ok, stride, layers, -1, ACC, BLOCK, BLOCK_D))
    cross = (_pair_kernel(z_ptr, offsets_ptr, kernels_ptr, gammas_ptr, s, s_next + batch, ok,
                          stride, layers, -1, ACC, BLOCK, BLOCK_D)
             + _pair_kernel(z_ptr, offsets_ptr, kernels_ptr, gammas_ptr, s_next, s + batch, ok,
                            stride, layers, -1, ACC, BLOCK, BLOCK_D))
    total = tl.sum(tl.where(ok, w_same * same + w_cross * cross, 0.0), axis=0)
    tl.store(partial_ptr + pid, total)


@triton.jit
def _load_rows(z_ptr, rows, cols, stride, inside):
    return tl.load(z_ptr + rows[:, None] * stride + cols[None, :], mask=inside, other=0.0)


@triton.jit
def _linear_backward_kernel(z_ptr, offsets_ptr, kernels_ptr, gammas_ptr, grad_ptr, out_ptr, n,
                            batch, stride, layers, blocks, weights_ptr, ACC: tl.constexpr,
                            BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    w_same = tl.load(weights_ptr)
    w_cross = tl.load(weights_ptr + 1)
    block = pid // layers
    target = pid - block * layers
    rows = block * BLOCK + tl.arange(0, BLOCK)
    ok = rows < n
    i = rows % batch
    own = rows - i
    other = tl.where(rows < batch, batch, 0)
    nxt = (i + 1) % batch
    prev = (i + batch - 1) % batch
    # Row r's four partners: its domain's neighbours (weight same), the other domain's (cross).
    p0, p1, p2, p3 = own + nxt, own + prev, other + nxt, other + prev
    a0 = -w_same * _pair_kernel(z_ptr, offsets_ptr, kernels_ptr, gammas_ptr, rows, p0, ok, stride,
                                layers, target, ACC, BLOCK, BLOCK_D)
    a1 = -w_same * _pair_kernel(z_ptr, offsets_ptr, kernels_ptr, gammas_ptr, rows, p1, ok, stride,
                                layers, target, ACC, BLOCK, BLOCK_D)
    a2 = -w_cross * _pair_kernel(z_ptr, offsets_ptr, kernels_ptr, gammas_ptr, rows, p2, ok,
                                 stride, layers, target, ACC, BLOCK, BLOCK_D)
    a3 = -w_cross * _pair_kernel(z_ptr, offsets_ptr, kernels_ptr, gammas_ptr, rows, p3, ok,
                                 stride, layers, target, ACC, BLOCK, BLOCK_D)
    scale = 2.0 * tl.load(grad_ptr).to(ACC)
    col0 = tl.load(offsets_ptr + target)
    dim = tl.load(offsets_ptr + target + 1) - col0
    for k0 in range(0, dim, BLOCK_D):
        cols = col0 + k0 + tl.arange(0, BLOCK_D)
        inside = ok[:, None] & ((k0 + tl.arange(0, BLOCK_D)) < dim)[None, :]
        zc = tl.load(z_ptr + rows[:, None] * stride + cols[None, :], mask=inside, other=0.0)
        g = ((a0 + a1 + a2 + a3)[:, None] * zc
             - a0[:, None] * _load_rows(z_ptr, p0, cols, stride, inside)
             - a1[:, None] * _load_rows(z_ptr, p1, cols, stride, inside)
             - a2[:, None] * _load_rows(z_ptr, p2, cols, stride, inside)
             - a3[:, None] * _load_rows(z_ptr, p3, cols, stride, inside))
        tl.store(out_ptr + rows[:, None] * stride + cols[None, :], scale * g, mask=inside)


_TL_ACC = {torch.float32: tl.float32, torch.float64: tl.float64}


def _pack(features, centers, kernels):
    """(zc (n, Σd), q (L, n), column offsets (L + 1,), kernel offsets (L + 1,)) on the device."""
    acc = stat_dtype(features[0].dtype)
    device = features[0].device
    zc = torch.cat([z.to(acc) - c for z, c in zip(features, centers)], dim=1).contiguous()
    dims = [z.shape[1] for z in features]
    offsets = torch.tensor([0, *torch.tensor(dims).cumsum(0).tolist()], dtype=torch.int32,
                           device=device)
    q = torch.stack([torch.linalg.vector_norm(part, dim=1).square()
                     for part in zc.split(dims, dim=1)]).contiguous()
    kernel_offsets = torch.tensor([0, *torch.tensor(kernels).cumsum(0).tolist()],
                                  dtype=torch.int32, device=device)
    return zc, q, offsets, kernel_offsets, dims


def _kernel_product(kernels) -> float:
    product = 1.0
    for count in kernels:
        product *= count
    return product


def forward(features, centers, gammas, kernels, estimate):
    zc, q, offsets, kernel_offsets, _ = _pack(features, centers, kernels)
    n = zc.shape[0]
    batch = n // 2
    acc = zc.dtype
    same, cross, diagonal = _weights(batch, estimate, _kernel_product(kernels))
    block, block_d = _config(zc.device)
    gammas = gammas.to(zc.device).contiguous()
    weights = torch.tensor([same, cross], dtype=acc, device=zc.device)
    if estimate == "linear":
        programs = triton.cdiv(batch, block)
        partial = torch.empty(programs, dtype=acc, device=zc.device)
        _linear_forward_kernel[(programs,)](
            zc, offsets, kernel_offsets, gammas, partial, batch, zc.stride(0), len(features),
            weights, ACC=_TL_ACC[acc], BLOCK=block, BLOCK_D=block_d)
    else:
        tiles = triton.cdiv(n, block)
        partial = torch.empty(tiles * tiles, dtype=acc, device=zc.device)
        _quadratic_forward_kernel[(tiles * tiles,)](
            zc, q, offsets, kernel_offsets, gammas, partial, n, batch, zc.stride(0),
            len(features), tiles, weights, ACC=_TL_ACC[acc], BLOCK=block, BLOCK_D=block_d)
    return (partial.sum(dtype=torch.float64) + diagonal).to(features[0].dtype)


def backward(grad, features, centers, gammas, kernels, estimate):
    zc, q, offsets, kernel_offsets, dims = _pack(features, centers, kernels)
    n = zc.shape[0]
    batch = n // 2
    acc = zc.dtype
    same, cross, _ = _weights(batch, estimate, _kernel_product(kernels))
    block, block_d = _config(zc.device)
    gammas = gammas.to(zc.device).contiguous()
    grad = grad.to(acc).reshape(1).contiguous()
    weights = torch.tensor([same, cross], dtype=acc, device=zc.device)
    out = torch.empty_like(zc)
    layers = len(features)
    blocks = triton.cdiv(n, block)
    if estimate == "linear":
        _linear_backward_kernel[(blocks * layers,)](
            zc, offsets, kernel_offsets, gammas, grad, out, n, batch, zc.stride(0), layers,
            blocks, weights, ACC=_TL_ACC[acc], BLOCK=block, BLOCK_D=block_d)
    else:
        _quadratic_backward_kernel[(blocks * layers,)](
            zc, q, offsets, kernel_offsets, gammas, grad, out, n, batch, zc.stride(0), layers,
            blocks, weights, ACC=_TL_ACC[acc], BLOCK=block, BLOCK_D=block_d)
    return [part.to(z.dtype).contiguous() for part, z in zip(out.split(dims, dim=1), features)]
