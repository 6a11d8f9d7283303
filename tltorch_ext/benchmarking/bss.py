"""Batch Spectral Shrinkage, forward and forward+backward (docs/api_bss.md).

Candidates on one feature matrix (b × d, float32), penalty = Σ of the k smallest σ²:
``tltorch_ext`` through each backend (the reference is a full SVD), ``torch.svd`` as a user of the
original BSS code writes it (the baseline), ``torch.linalg.svdvals``, and the float32 Gram with
``torch.linalg.eigvalsh`` (forward) or ``torch.linalg.eigh`` (forward+backward, as eigvalsh's
backward needs the eigenvectors anyway). Shapes: batch b ∈ {32, 64, 128, 256} of features of
dimension d ∈ {512, 2048}, k ∈ {1, 4}.
"""
from __future__ import annotations

import itertools

import torch

from ..ops.bss import bss_penalty
from .harness import Case, register, with_backends

BATCHES = (32, 64, 128, 256)
DIMS = (512, 2048)
KS = (1, 4)


def _torch_svd(x, k):
    _, s, _ = torch.svd(x)
    return (s[-k:] ** 2).sum()


def _svdvals(x, k):
    return (torch.linalg.svdvals(x)[-k:] ** 2).sum()


def _gram(x):
    return x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x


def _gram_eigvalsh(x, k):
    return torch.linalg.eigvalsh(_gram(x))[:k].clamp(min=0).sum()


def _gram_eigh(x, k):
    return torch.linalg.eigh(_gram(x)).eigenvalues[:k].clamp(min=0).sum()


def _runner(penalty, x, k, backward):
    if not backward:
        def run():
            with torch.no_grad():
                return penalty(x, k)
        return run

    def run():
        x.grad = None
        penalty(x, k).backward()
    return run


def _case(b, d, k, backward, device) -> Case:
    generator = torch.Generator().manual_seed(b * d + k)
    x = torch.randn(b, d, generator=generator).to(device).requires_grad_(backward)
    mode = "fwd+bwd" if backward else "fwd"
    candidates = {
        "torch.svd": _runner(_torch_svd, x, k, backward),
        "torch.linalg.svdvals": _runner(_svdvals, x, k, backward),
    }
    gram_name, gram_fn = ("Gram+eigh", _gram_eigh) if backward else ("Gram+eigvalsh", _gram_eigvalsh)
    candidates[gram_name] = _runner(gram_fn, x, k, backward)
    candidates.update(with_backends(_runner(bss_penalty, x, k, backward), device))
    m = min(b, d)
    # Gram (m²·max(b, d) multiply-adds) and a dense eigensolver (≈ 9 m³ flops).
    flops = 2 * m * m * max(b, d) + 9 * m**3
    return Case("bss", f"{mode} {b}x{d} k={k} fp32", candidates, baseline="torch.svd",
                flops=flops)


@register("bss")
def bss_cases(device: torch.device, quick: bool):
    shapes = [(32, 2048, 1), (256, 2048, 4)] if quick else itertools.product(BATCHES, DIMS, KS)
    for (b, d, k), backward in itertools.product(shapes, (False, True)):
        yield _case(b, d, k, backward, device)
