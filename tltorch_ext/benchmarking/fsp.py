"""FSP loss of one pair of maps per network, forward and forward+backward (docs/api_fsp_nst.md).

Candidates on the same (already pooled) maps: ``fsp_loss`` through each tltorch_ext backend, the
direct broadcast formulation (top[:, :, None, :] · bot[:, None, :, :]).mean(-1), the baseline
where its B·C_top·C_bot·HW product fits in memory, the two-``torch.bmm`` formulation a user
would write, and ``torch.compile`` of it. Only the student's maps require grad (the teacher is
frozen). Shapes: CIFAR ResNet stages (B = 64: 16/32/64 channels at 32×32/16×16/8×8), and on GPU
the ResNet-50 stages (B = 32: 256×56×56 ... 2048×7×7); float32 and bfloat16.
"""
from __future__ import annotations

import torch

from ..ops.fsp import fsp_loss
from .harness import Case, register, with_backends

CIFAR = [(64, 16, 32, 32), (64, 32, 16, 16), (64, 64, 8, 8)]
RESNET50 = [(32, 256, 56, 56), (32, 512, 28, 28), (32, 1024, 14, 14), (32, 2048, 7, 7)]
# The broadcast product is left out above this size (it would not fit, or take minutes).
BROADCAST_LIMIT_BYTES = {"cpu": 2**30, "cuda": 8 * 2**30}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def broadcast_loss(bot_s, top_s, bot_t, top_t):
    def gram(bot, top):
        return (top[:, :, None, :] * bot[:, None, :, :]).mean(-1)
    return (gram(bot_s, top_s) - gram(bot_t, top_t)).square().mean()


def bmm_loss(bot_s, top_s, bot_t, top_t):
    def gram(bot, top):
        return torch.bmm(top, bot.transpose(1, 2)) / top.shape[-1]
    return (gram(bot_s, top_s) - gram(bot_t, top_t)).square().mean()


def runner(loss_fn, inputs, backward):
    """One timed call: the loss under no_grad, or the loss and its backward into the inputs that
    require grad."""
    if not backward:
        def run():
            with torch.no_grad():
                return loss_fn(*inputs)
        return run

    def run():
        for x in inputs:
            x.grad = None
        loss_fn(*inputs).backward()
    return run


def student_teacher_maps(batch, channels, spatial, count, dtype, device, backward):
    """count maps for the student (requiring grad when timing backward), count for the teacher."""
    generator = torch.Generator().manual_seed(batch * channels + spatial)
    maps = [torch.randn(batch, channels, spatial, generator=generator).to(device, dtype)
            for _ in range(2 * count)]
    for x in maps[:count]:
        x.requires_grad_(backward)
    return maps


def _case(shape, dtype, backward, device) -> Case:
    batch, channels, h, w = shape
    hw = h * w
    bot_s, top_s, bot_t, top_t = student_teacher_maps(batch, channels, hw, 2, dtype, device,
                                                      backward)
    inputs = (bot_s, top_s, bot_t, top_t)
    candidates = {}
    broadcast_bytes = batch * channels * channels * hw * dtype.itemsize
    if broadcast_bytes <= BROADCAST_LIMIT_BYTES[device.type]:
        candidates["broadcast (torch)"] = runner(broadcast_loss, inputs, backward)
    candidates["bmm (torch)"] = runner(bmm_loss, inputs, backward)
    candidates["torch.compile(bmm)"] = runner(torch.compile(bmm_loss, dynamic=False), inputs,
                                              backward)
    candidates.update(with_backends(runner(fsp_loss, inputs, backward), device))
    gram_flops = 2 * batch * channels * channels * hw
    mode = "fwd+bwd" if backward else "fwd"
    return Case(
        op="fsp",
        group=f"{mode} {batch}x{channels}x{h}x{w} {DTYPE_NAMES[dtype]}",
        candidates=candidates,
        baseline="broadcast (torch)" if "broadcast (torch)" in candidates else "bmm (torch)",
        # Forward: two Grams; backward: two products for the student's two maps.
        flops=gram_flops * (4 if backward else 2),
        bytes_moved=len(inputs) * bot_s.numel() * bot_s.element_size(),
    )


def set_recompile_limit(cases: int) -> None:
    """The compiled candidates specialize once per case; let dynamo keep them all."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * cases)


def feature_map_cases(device: torch.device, quick: bool, make_case):
    """FSP's and NST's grid: every shape × dtype × (forward, forward+backward), by ``make_case``."""
    shapes = CIFAR + (RESNET50 if device.type == "cuda" else [])
    dtypes = (torch.float32, torch.bfloat16)
    passes = (False, True)
    if quick:  # the CPU acceptance set: CIFAR, float32, forward+backward
        shapes, dtypes, passes = CIFAR, dtypes[:1], (True,)
    set_recompile_limit(len(shapes) * len(dtypes) * len(passes))
    for shape in shapes:
        for dtype in dtypes:
            for backward in passes:
                yield make_case(shape, dtype, backward, device)


@register("fsp")
def fsp_cases(device: torch.device, quick: bool):
    return feature_map_cases(device, quick, _case)
