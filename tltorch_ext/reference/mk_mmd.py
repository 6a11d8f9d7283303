"""Plain-PyTorch multi-kernel MMD (docs/api_mmd.md): the fallback backend and the form the fused
kernels are checked against, built on an explicit (2B × 2B) weight matrix W.

Every layer l gives rows z^l (n = 2B, d_l): the B source rows, then the B target rows, and the
layer's centre c^l (its column means; distances do not depend on it, it only keeps the Gram trick
accurate). With zc = z − c, q_i = ‖zc_i‖² and d^l_ij = max(q_i + q_j − 2 zc_i·zc_j, 0), the kernel
is K_ij = Π_l Σ_{k ∈ l} exp(−γ_k d^l_ij), γ_k = 1/(2σ_k²) given (σ has no gradient), and the
estimate is Σ_ij W_ij K_ij with W from :func:`weight_matrix`. The diagonal d_ii is exactly 0.

Gradient (g the upstream scalar): with G^l_ij = ∂K_ij/∂d^l_ij = −(Σ_k γ_k e^{−γ_k d^l_ij})·
Π_{l' ≠ l} S^{l'}_ij and A^l = (W + Wᵀ) ∘ G^l (symmetric, zero diagonal),
∂/∂z^l = 2g (diag(A^l 1) − A^l) zc^l, since ∂d_ij/∂z_i = 2(z_i − z_j).
Accumulation in float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import torch
from torch import Tensor

ESTIMATES = ("biased", "unbiased", "linear")


def weight_matrix(batch: int, estimate: str, dtype=torch.float64, device=None) -> Tensor:
    """W (2B × 2B), rows and columns ordered source then target.

    - ``biased`` (V-statistic): 1/B² on the whole s-s and t-t blocks, −1/B² on s-t and t-s.
    - ``unbiased`` (U-statistic, TLlib's ``linear=False`` matrix): 1/(B(B−1)) off the diagonal
      of s-s and t-t, 0 on it, −1/B² on s-t and t-s.
    - ``linear`` (TLlib's ``linear=True`` matrix): for i = 0..B−1 and i' = (i+1) mod B the entries
      (s_i, s_i'), (t_i, t_i') are set to 1/B and (s_i, t_i'), (s_i', t_i) to −1/B. Entries are
      set, not added: at B = 2 the two cross entries of i = 0 and i = 1 coincide.
    """
    n = 2 * batch
    w = torch.zeros(n, n, dtype=dtype, device=device)
    s, t = slice(0, batch), slice(batch, n)
    if estimate == "linear":
        i = torch.arange(batch, device=device)
        nxt = (i + 1) % batch
        w[i, nxt] = 1.0 / batch
        w[i + batch, nxt + batch] = 1.0 / batch
        w[i, nxt + batch] = -1.0 / batch
        w[nxt, i + batch] = -1.0 / batch
        return w
    same = 1.0 / batch**2 if estimate == "biased" else 1.0 / (batch * (batch - 1))
    for block in (s, t):
        w[block, block] = same
    if estimate == "unbiased":
        w.fill_diagonal_(0.0)
    w[s, t] = -1.0 / batch**2
    w[t, s] = -1.0 / batch**2
    return w


def _distances(z: Tensor, center: Tensor) -> tuple[Tensor, Tensor]:
    """(zc, d): centred rows in the accumulation dtype and their squared distances, d_ii = 0."""
    zc = z.to(center.dtype) - center
    q = zc.square().sum(1)
    d = (q[:, None] + q[None, :] - 2 * zc @ zc.T).clamp_min(0)
    return zc, d.fill_diagonal_(0.0)


def _layer_sums(features, centers, gammas, kernels):
    """Per layer: zc, S = Σ_k e^{−γ_k d} and T = Σ_k γ_k e^{−γ_k d}."""
    out, first = [], 0
    for z, center, count in zip(features, centers, kernels):
        zc, d = _distances(z, center)
        g = gammas[first:first + count].to(zc.dtype)
        e = torch.exp(-g[:, None, None] * d)
        out.append((zc, e.sum(0), (g[:, None, None] * e).sum(0)))
        first += count
    return out


def forward(features: list[Tensor], centers: list[Tensor], gammas: Tensor, kernels: list[int],
            estimate: str) -> Tensor:
    """Σ_ij W_ij K_ij as a scalar in the features' dtype."""
    layers = _layer_sums(features, centers, gammas, kernels)
    k = torch.stack([s for _, s, _ in layers]).prod(0)
    w = weight_matrix(features[0].shape[0] // 2, estimate, k.dtype, k.device)
    return (w * k).sum().to(features[0].dtype)


def backward(grad: Tensor, features: list[Tensor], centers: list[Tensor], gammas: Tensor,
             kernels: list[int], estimate: str) -> list[Tensor]:
    """∂(g·estimate)/∂z^l per layer, in the features' dtype."""
    layers = _layer_sums(features, centers, gammas, kernels)
    sums = torch.stack([s for _, s, _ in layers])
    w = weight_matrix(features[0].shape[0] // 2, estimate, sums.dtype, sums.device)
    w = w + w.T
    w.fill_diagonal_(0.0)
    g = grad.to(sums.dtype)
    grads = []
    for index, ((zc, _, t), z) in enumerate(zip(layers, features)):
        others = torch.cat([sums[:index], sums[index + 1:]]).prod(0)
        a = -w * t * others
        grads.append((2 * g * (a.sum(1, keepdim=True) * zc - a @ zc)).to(z.dtype))
    return grads
