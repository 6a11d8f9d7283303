"""NST loss of one pair of maps, forward and forward+backward (docs/api_fsp_nst.md).

Candidates on the same maps (student and teacher with equal shapes): ``nst_loss`` through each
tltorch_ext backend (the cheaper Gram side chosen per call), the (B, C_s, C_t, HW) pairwise
broadcast formulation of the kernel sums (the baseline where it fits in memory), the best
plain-``torch.bmm`` formulation (the same cheaper side: HW × HW Grams, or the three C × C kernel
terms) and ``torch.compile`` of it. Only the student's map requires grad. Shapes: CIFAR ResNet
stages (B = 64) and on GPU the ResNet-50 stages (B = 32); float32 and bfloat16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.nst import nst_loss, spatial_side_is_cheaper
from .fsp import (BROADCAST_LIMIT_BYTES, DTYPE_NAMES, feature_map_cases, runner,
                  student_teacher_maps)
from .harness import Case, register, with_backends


def _normalized(f_s, f_t):
    return F.normalize(f_s, dim=2, eps=1e-12), F.normalize(f_t, dim=2, eps=1e-12)


def broadcast_loss(f_s, f_t):
    s, t = _normalized(f_s, f_t)

    def kernel(a, b):
        return (a[:, :, None, :] * b[:, None, :, :]).sum(-1).square()
    return kernel(t, t).detach().mean() + kernel(s, s).mean() - 2 * kernel(s, t).mean()


def bmm_loss(f_s, f_t):
    s, t = _normalized(f_s, f_t)
    c_s, c_t, hw = s.shape[1], t.shape[1], s.shape[2]
    if spatial_side_is_cheaper(c_s, c_t, hw):
        e = torch.bmm(s.transpose(1, 2), s) / c_s - torch.bmm(t.transpose(1, 2), t).detach() / c_t
        return e.square().sum() / s.shape[0]

    def kernel_mean(a, b):
        return torch.bmm(a, b.transpose(1, 2)).square().mean()
    return kernel_mean(t, t).detach() + kernel_mean(s, s) - 2 * kernel_mean(s, t)


def _case(shape, dtype, backward, device) -> Case:
    batch, channels, h, w = shape
    hw = h * w
    inputs = tuple(student_teacher_maps(batch, channels, hw, 1, dtype, device, backward))
    candidates = {}
    if batch * channels * channels * hw * dtype.itemsize <= BROADCAST_LIMIT_BYTES[device.type]:
        candidates["broadcast (torch)"] = runner(broadcast_loss, inputs, backward)
    candidates["bmm (torch)"] = runner(bmm_loss, inputs, backward)
    candidates["torch.compile(bmm)"] = runner(torch.compile(bmm_loss, dynamic=False), inputs,
                                              backward)
    candidates.update(with_backends(runner(nst_loss, inputs, backward), device))
    spatial = spatial_side_is_cheaper(channels, channels, hw)
    # Multiply-adds ×2 of the fused op's side: forward the symmetric Grams on their upper
    # triangles; backward (student only) one more Gram pass and its application.
    gram = batch * (hw * hw * channels if spatial else hw * channels * channels)
    mode = "fwd+bwd" if backward else "fwd"
    return Case(
        op="nst",
        group=f"{mode} {batch}x{channels}x{h}x{w} {DTYPE_NAMES[dtype]} "
              f"{'HWxHW' if spatial else 'CxC'}",
        candidates=candidates,
        baseline="broadcast (torch)" if "broadcast (torch)" in candidates else "bmm (torch)",
        flops=2 * gram * (2 if not backward else 6),
        bytes_moved=2 * inputs[0].numel() * inputs[0].element_size(),
    )


@register("nst")
def nst_cases(device: torch.device, quick: bool):
    return feature_map_cases(device, quick, _case)
