"""DAN's multi-kernel MMD (biased estimate, DAN's five kernels), forward and forward+backward
(docs/api_mmd.md).

Candidates on one pair of (B, d) float32 batches, both requiring grad when timing backward:
``mk_mmd`` through each tltorch_ext backend, the plain-PyTorch form a user writes (the baseline:
``torch.cdist`` of the stacked batch squared, the detached mean as bandwidth, five exponentials
and the block means) and TLlib's form (an (n, n, d) broadcast of the differences, where it fits
in memory). Shapes: B = 32 … 512, d = 256 … 2048 (on CPU B ∈ {32, 128, 512}, d ∈ {256, 2048}).
"""
from __future__ import annotations

import itertools

import torch

from ..ops.mk_mmd import DAN_ALPHAS, mk_mmd
from .fsp import BROADCAST_LIMIT_BYTES, runner
from .harness import Case, register, with_backends


def _block_means(k, batch):
    return (k[:batch, :batch].mean() + k[batch:, batch:].mean()
            - 2 * k[:batch, batch:].mean())


def _kernels(d):
    scale = d.detach().mean()
    return sum(torch.exp(-d / (2 * alpha * scale)) for alpha in DAN_ALPHAS)


def cdist_mmd(z_s, z_t):
    z = torch.cat([z_s, z_t])
    return _block_means(_kernels(torch.cdist(z, z).square()), z_s.shape[0])


def broadcast_mmd(z_s, z_t):
    z = torch.cat([z_s, z_t])
    return _block_means(_kernels(((z.unsqueeze(0) - z.unsqueeze(1)) ** 2).sum(2)), z_s.shape[0])


def _case(batch, dim, backward, device) -> Case:
    generator = torch.Generator().manual_seed(batch * dim)
    z_s = torch.randn(batch, dim, generator=generator).to(device).requires_grad_(backward)
    z_t = (torch.randn(batch, dim, generator=generator) + 0.3).to(device)
    z_t.requires_grad_(backward)
    inputs = (z_s, z_t)
    n = 2 * batch
    candidates = {"cdist (torch)": runner(cdist_mmd, inputs, backward)}
    if n * n * dim * 4 <= BROADCAST_LIMIT_BYTES[device.type] // 4:
        candidates["broadcast (TLlib form)"] = runner(broadcast_mmd, inputs, backward)
    candidates.update(with_backends(runner(mk_mmd, inputs, backward), device))
    # The fused op's Gram: n²·d/2 multiply-adds forward (upper tiles), 2·n²·d more backward.
    gram = n * n * dim // 2 + (2 * n * n * dim if backward else 0)
    mode = "fwd+bwd" if backward else "fwd"
    return Case(op="mk_mmd", group=f"{mode} B={batch} d={dim} fp32", candidates=candidates,
                baseline="cdist (torch)", flops=2 * gram)


@register("mk_mmd")
def mk_mmd_cases(device: torch.device, quick: bool):
    if quick:
        shapes = [(32, 256), (128, 2048)]
    elif device.type == "cpu":
        shapes = itertools.product((32, 128, 512), (256, 2048))
    else:
        shapes = itertools.product((32, 64, 128, 256, 512), (256, 512, 1024, 2048))
    for (batch, dim), backward in itertools.product(shapes, (False, True)):
        yield _case(batch, dim, backward, device)
