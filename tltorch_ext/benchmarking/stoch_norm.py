"""StochNorm2d in training, forward and forward+backward (docs/api_stochnorm.md).

Candidates on the same input: the module through each tltorch_ext backend (the reference
included), ``nn.BatchNorm2d`` (the floor: StochNorm does BatchNorm's work plus a per-channel
choice), the two-branch formulation a user would write (two ``F.batch_norm`` calls, batch and
running statistics, mixed by the mask with ``torch.where``: the baseline), and
``torch.compile`` of the plain-torch reference. Shapes: ResNet-50 feature maps on GPU, a CPU-sized
set on CPU; float32 and bfloat16; NCHW and channels_last.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..finetune.stochnorm import StochNorm2d
from ..reference import stoch_norm as reference
from .harness import Case, register, with_backends

GPU_SHAPES = [(32, 64, 112, 112), (32, 256, 56, 56), (32, 2048, 7, 7)]
CPU_SHAPES = [(32, 64, 56, 56), (32, 256, 14, 14), (32, 512, 7, 7)]
MOMENTUM, EPS, P = 0.1, 1e-5, 0.5


def _two_branch(x, weight, bias, running_mean, running_var):
    """StochNorm as two BatchNorms mixed per channel (the running branch first: the batch branch
    updates the running statistics in place)."""
    mask = torch.rand(x.shape[1], device=x.device) < P
    y_running = F.batch_norm(x, running_mean, running_var, weight, bias, False, MOMENTUM, EPS)
    y_batch = F.batch_norm(x, running_mean, running_var, weight, bias, True, MOMENTUM, EPS)
    return torch.where(mask.view(1, -1, 1, 1), y_batch, y_running)


def _reference_step(x, weight, bias, running_mean, running_var):
    """The reference forward (differentiable plain torch) with the mask draw and running update,
    as a user would hand it to torch.compile."""
    mask = torch.rand(x.shape[1], device=x.device) < P
    y, _, _, mean, var = reference.forward(x, weight, bias, running_mean, running_var, mask, EPS)
    count = x.numel() // x.shape[1]
    with torch.no_grad():
        running_mean.lerp_(mean.to(running_mean.dtype), MOMENTUM)
        running_var.lerp_((var * (count / (count - 1))).to(running_var.dtype), MOMENTUM)
    return y


def _runner(forward, x, grad_y, params, backward):
    """One timed call: forward (under no_grad when forward-only), then backward into x and the
    parameters when asked."""
    if not backward:
        def run():
            with torch.no_grad():
                return forward(x)
        return run

    def run():
        x.grad = None
        for p in params:
            p.grad = None
        forward(x).backward(grad_y)
    return run


def _case(shape, dtype, memory_format, backward, device) -> Case:
    C = shape[1]
    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=memory_format)
    x.requires_grad_(backward)
    grad_y = torch.randn_like(x)

    factory = dict(eps=EPS, momentum=MOMENTUM, device=device, dtype=dtype)
    stoch = StochNorm2d(C, p=P, **factory).train()
    bn = nn.BatchNorm2d(C, **factory).train()
    weight = torch.ones(C, device=device, dtype=dtype, requires_grad=True)
    bias = torch.zeros(C, device=device, dtype=dtype, requires_grad=True)
    running_mean = torch.zeros(C, device=device, dtype=dtype)
    running_var = torch.ones(C, device=device, dtype=dtype)
    stats = (weight, bias, running_mean, running_var)
    compiled_reference = torch.compile(_reference_step, dynamic=False)

    candidates = {
        "two-branch (torch)": _runner(lambda t: _two_branch(t, *stats), x, grad_y,
                                      (weight, bias), backward),
        "nn.BatchNorm2d": _runner(bn, x, grad_y, tuple(bn.parameters()), backward),
        "torch.compile(reference)": _runner(lambda t: compiled_reference(t, *stats), x, grad_y,
                                            (weight, bias), backward),
    }
    candidates.update(with_backends(_runner(stoch, x, grad_y, tuple(stoch.parameters()), backward),
                                    device))
    fmt = "channels_last" if memory_format == torch.channels_last else "NCHW"
    dtype_name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    # What the fused kernels must move: forward reads x twice and writes y; backward reads x and
    # dy twice and writes dx.
    passes = 8 if backward else 3
    return Case(
        op="stoch_norm",
        group=f"{'fwd+bwd' if backward else 'fwd'} {'x'.join(map(str, shape))} {dtype_name} {fmt}",
        candidates=candidates,
        baseline="two-branch (torch)",
        bytes_moved=passes * x.numel() * x.element_size(),
    )


@register("stoch_norm")
def stoch_norm_cases(device: torch.device, quick: bool):
    shapes = GPU_SHAPES if device.type == "cuda" else CPU_SHAPES
    dtypes = (torch.float32, torch.bfloat16)
    passes = (False, True)
    if quick:  # the acceptance shape only, float32, forward+backward
        shapes, dtypes, passes = shapes[:1], dtypes[:1], (True,)
    # The compiled reference specializes once per case (shape, dtype, format, pass); let dynamo
    # keep them all rather than fall back to eager after its default 8.
    cases = len(shapes) * len(dtypes) * 2 * len(passes)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * cases)
    for shape in shapes:
        for dtype in dtypes:
            for memory_format in (torch.contiguous_format, torch.channels_last):
                for backward in passes:
                    yield _case(shape, dtype, memory_format, backward, device)
