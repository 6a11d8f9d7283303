"""StochNorm (docs/api_stochnorm.md): the op through every backend, the reference included,
against an independent float64 closed form (two F.batch_norm mixed per channel) and further
closed forms (BatchNorm at p = 1, running statistics at p = 0), gradients, custom-op checks,
torch.compile, module state and bad input."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tltorch_ext
from op_testing import CPU_BACKENDS, GPU_BACKENDS, rel_err, tolerances
from tltorch_ext.finetune import StochNorm1d, StochNorm2d, StochNorm3d, convert_model
from tltorch_ext.ops import (stoch_norm, stoch_norm_backward_elemt, stoch_norm_backward_reduce,
                             stoch_norm_elemt, stoch_norm_stats, update_running_stats)

BACKENDS = CPU_BACKENDS
EPS = 1e-5
# ‖out − ref‖ / ‖ref‖ bounds. The Triton interpreter rounds float32 → bfloat16 by truncation (the
# GPU rounds to nearest), which the bfloat16 bound covers.
TOLERANCE = tolerances(float32=2e-5, bfloat16=1e-2, float16=2e-3)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}[x.dim()]
    return x.contiguous(memory_format=fmt)


def per_channel(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.view([1, -1] + [1] * (ndim - 2))


def make_case(shape, dtype, cl=False, device="cpu", param_dtype=None):
    """x with a distinct mean and scale per channel (exercises the statistics' robustness), affine
    parameters, running statistics, and a mask holding both values."""
    C = shape[1]
    offsets = per_channel(torch.linspace(-4, 6, C, dtype=torch.float64), len(shape))
    scales = per_channel(torch.linspace(0.5, 3, C, dtype=torch.float64), len(shape))
    x = (torch.randn(shape, dtype=torch.float64) * scales + offsets).to(dtype)
    if cl:
        x = channels_last(x)
    param_dtype = param_dtype or dtype
    params = dict(
        weight=torch.randn(C, dtype=torch.float64).to(param_dtype),
        bias=torch.randn(C, dtype=torch.float64).to(param_dtype),
        running_mean=torch.randn(C, dtype=torch.float64).to(param_dtype),
        running_var=(torch.rand(C, dtype=torch.float64) + 0.5).to(param_dtype),
    )
    mask = torch.arange(C) % 3 != 1
    mask[torch.randperm(C)[: C // 4]] ^= True
    to = dict(device=device)
    return x.to(**to), {k: v.to(**to) for k, v in params.items()}, mask.to(**to)


def run_op(backend, x, params, mask, grad_y, affine=True):
    """Forward outputs and (grad_x, grad_weight, grad_bias) through the op and autograd."""
    x = x.detach().clone().requires_grad_()
    weight = params["weight"].detach().clone().requires_grad_() if affine else None
    bias = params["bias"].detach().clone().requires_grad_() if affine else None
    with tltorch_ext.set_backend(backend):
        out = stoch_norm(x, weight, bias, params["running_mean"], params["running_var"], mask, EPS)
        out[0].backward(grad_y)
    grads = (x.grad, weight.grad if affine else None, bias.grad if affine else None)
    return out, grads


def oracle64(x, params, mask, grad_y, affine=True):
    """Independent float64 closed form on the same (rounded) values: BatchNorm with batch
    statistics on the channels of the mask and the running ones elsewhere (torch.where of two
    F.batch_norm), gradients by autograd; the statistics by var_mean."""
    xr = x.double().requires_grad_()
    w = params["weight"].double().requires_grad_() if affine else None
    b = params["bias"].double().requires_grad_() if affine else None
    rm, rv = params["running_mean"].double(), params["running_var"].double()
    y = torch.where(per_channel(mask, x.dim()),
                    F.batch_norm(xr, None, None, w, b, training=True, eps=EPS),
                    F.batch_norm(xr, rm, rv, w, b, training=False, eps=EPS))
    y.backward(grad_y.double())
    var, mean = torch.var_mean(x.double(), [0, *range(2, x.dim())], correction=0)
    out = (y.detach(), torch.where(mask, mean, rm), torch.where(mask, var, rv).add(EPS).rsqrt(),
           mean, var)
    return out, (xr.grad, w.grad if affine else None, b.grad if affine else None)


# ---------------------------------------------------------------------------------------------
# Every backend against the float64 oracle

SHAPES = {
    "2d": ((7, 5), False),
    "3d": ((3, 5, 7), False),
    "4d": ((3, 5, 7, 9), False),
    "4d-channels-last": ((3, 5, 7, 9), True),
    "5d": ((2, 3, 3, 5, 7), False),
    "5d-channels-last": ((2, 3, 3, 5, 7), True),
    "many-channels-last": ((3, 261, 3, 1), True),  # more channels than one Triton block
    "long-rows": ((2, 3, 4099), False),  # several tiles / cache chunks per sample
    "many-short-rows": ((300, 3, 5, 5), False),  # several cache segments of whole rows
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("case", list(SHAPES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_matches_float64_oracle(backend, case, dtype):
    shape, cl = SHAPES[case]
    x, params, mask = make_case(shape, dtype, cl)
    grad_y = torch.randn(shape, dtype=torch.float64).to(dtype)
    out, grads = run_op(backend, x, params, mask, grad_y)
    ref_out, ref_grads = oracle64(x, params, mask, grad_y)
    # y in x's dtype, the statistics in float32 (float64 for float64 x): each within its bound.
    names = ("y", "save_mean", "save_invstd", "batch_mean", "batch_var")
    for name, o, r in zip(names, out, ref_out):
        assert rel_err(o, r) < TOLERANCE[o.dtype], name
    for name, o, r in zip(("grad_x", "grad_weight", "grad_bias"), grads, ref_grads):
        assert o.dtype == (x.dtype if name == "grad_x" else params["weight"].dtype)
        assert rel_err(o, r) < TOLERANCE[dtype], name
    # Outputs keep x's memory format; statistics are float32 (float64 for float64 input).
    for t in (out[0], grads[0]):
        assert t.stride() == x.stride()
    assert out[1].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_without_affine_and_with_float32_parameters(backend):
    # affine=False (γ = 1, β = 0) on float32, and bfloat16 data with float32 parameters.
    for dtype, param_dtype, affine in ((torch.float32, None, False),
                                       (torch.bfloat16, torch.float32, True)):
        x, params, mask = make_case((4, 6, 5, 3), dtype, param_dtype=param_dtype)
        grad_y = torch.randn_like(x)
        out, grads = run_op(backend, x, params, mask, grad_y, affine)
        ref_out, ref_grads = oracle64(x, params, mask, grad_y, affine)
        assert rel_err(out[0], ref_out[0]) < TOLERANCE[dtype]
        assert rel_err(grads[0], ref_grads[0]) < TOLERANCE[dtype]
        if affine:
            assert grads[1].dtype == torch.float32
            assert rel_err(grads[1], ref_grads[1]) < TOLERANCE[dtype]


# ---------------------------------------------------------------------------------------------
# The phases: each against float64 sums written out per channel, and composed over a batch split
# in two (what SyncStochNorm does across ranks) against the whole batch's oracle

PHASE_SHAPES = {k: SHAPES[k] for k in ("2d", "4d", "4d-channels-last", "many-channels-last")}


def channel_rows(t: torch.Tensor) -> torch.Tensor:
    """t (N, C, *) as float64 (C, N·S): one row of values per channel."""
    return t.double().transpose(0, 1).reshape(t.shape[1], -1)


def saved_stats(x, params, mask):
    """The float64 statistics each channel normalizes with (batch ones where the mask is set)."""
    values = channel_rows(x)
    mean = values.sum(1) / values.shape[1]
    var = ((values - mean[:, None]) ** 2).sum(1) / values.shape[1]
    save_mean = torch.where(mask, mean, params["running_mean"].double())
    save_invstd = 1 / torch.sqrt(torch.where(mask, var, params["running_var"].double()) + EPS)
    return mean, var, save_mean, save_invstd


def acc_of(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(PHASE_SHAPES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_phases_match_float64_sums(backend, case, dtype):
    check_phases(backend, *PHASE_SHAPES[case], dtype, "cpu")


def check_phases(backend, shape, cl, dtype, device):
    x, params, mask = make_case(shape, dtype, cl, device)
    grad_y = torch.randn(shape, dtype=torch.float64, device=device).to(dtype)
    if cl:
        grad_y = channels_last(grad_y)
    mean, var, save_mean, save_invstd = saved_stats(x, params, mask)
    w, b = params["weight"].double(), params["bias"].double()
    values, dy = channel_rows(x), channel_rows(grad_y)
    xhat = (values - save_mean[:, None]) * save_invstd[:, None]
    sum_dy, sum_dy_xhat = dy.sum(1), (dy * xhat).sum(1)
    # An arbitrary count (a process group's) in dx, to see that the op uses the one given.
    count = 3 * values.shape[1]
    batch = mask.double() / count
    dx = (w * save_invstd)[:, None] * (dy - (batch * sum_dy)[:, None]
                                       - xhat * (batch * sum_dy_xhat)[:, None])
    acc = acc_of(x)
    with tltorch_ext.set_backend(backend):
        got_mean, got_var = stoch_norm_stats(x)
        y = stoch_norm_elemt(x, params["weight"], params["bias"], save_mean.to(acc),
                             save_invstd.to(acc))
        got_sum_dy, got_sum_dy_xhat = stoch_norm_backward_reduce(grad_y, x, save_mean.to(acc),
                                                                 save_invstd.to(acc))
        grad_x = stoch_norm_backward_elemt(grad_y, x, params["weight"], mask, save_mean.to(acc),
                                           save_invstd.to(acc), sum_dy.to(acc),
                                           sum_dy_xhat.to(acc), count)
    for name, got, want in (("mean", got_mean, mean), ("var", got_var, var),
                            ("sum_dy", got_sum_dy, sum_dy),
                            ("sum_dy_xhat", got_sum_dy_xhat, sum_dy_xhat)):
        assert got.dtype == acc and got.shape == want.shape, name
        assert rel_err(got, want) < TOLERANCE[dtype], name
    for name, got, want in (("y", y, xhat * w[:, None] + b[:, None]), ("grad_x", grad_x, dx)):
        assert got.dtype == dtype and got.stride() == x.stride(), name
        assert rel_err(channel_rows(got), want) < TOLERANCE[dtype], name


@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_phases_over_a_split_batch_equal_the_whole_batch(backend, cl):
    # Two unequal parts of a batch with their moments merged and their gradient sums added give
    # the whole batch's StochNorm: the float64 oracle's y and dx, part by part.
    x, params, mask = make_case((7, 5, 4, 3), torch.float64, cl)
    grad_y = torch.randn_like(x)
    (y_ref, *_), (dx_ref, _, _) = oracle64(x, params, mask, grad_y)
    parts = (slice(0, 2), slice(2, 7))
    rm, rv = params["running_mean"], params["running_var"]
    with tltorch_ext.set_backend(backend):
        moments = [(p.stop - p.start, *stoch_norm_stats(x[p])) for p in parts]
        count = sum(n * 12 for n, _, _ in moments)
        total = sum(n * 12 * m for n, m, _ in moments)
        total_sq = sum(n * 12 * (v + m * m) for n, m, v in moments)
        mean = total / count
        var = total_sq / count - mean * mean
        save_mean = torch.where(mask, mean, rm)
        save_invstd = torch.where(mask, var, rv).add(EPS).rsqrt()
        sums = [stoch_norm_backward_reduce(grad_y[p], x[p], save_mean, save_invstd) for p in parts]
        sum_dy, sum_dy_xhat = (sum(s[i] for s in sums) for i in range(2))
        for p in parts:
            y = stoch_norm_elemt(x[p], params["weight"], params["bias"], save_mean, save_invstd)
            dx = stoch_norm_backward_elemt(grad_y[p], x[p], params["weight"], mask, save_mean,
                                           save_invstd, sum_dy, sum_dy_xhat, count)
            torch.testing.assert_close(y, y_ref[p], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(dx, dx_ref[p], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_forward_and_backward_equal_their_phases(backend):
    # The fused ops are each backend's phases composed in one call: same values (to rounding of
    # the selection's 1/√(σ² + ε), which the fused combine computes in-kernel).
    x, params, mask = make_case((3, 6, 5, 4), torch.float32, cl=True)
    grad_y = channels_last(torch.randn_like(x))
    w, b = params["weight"], params["bias"]
    rm, rv = params["running_mean"], params["running_var"]
    with tltorch_ext.set_backend(backend):
        y, save_mean, save_invstd, batch_mean, batch_var = stoch_norm(x, w, b, rm, rv, mask, EPS)
        mean, var = stoch_norm_stats(x)
        phase_invstd = torch.where(mask, var, rv).add(EPS).rsqrt()
        phase_y = stoch_norm_elemt(x, w, b, torch.where(mask, mean, rm), phase_invstd)
        grads = torch.ops.tltorch_ext.stoch_norm_backward(grad_y, x, w, mask, save_mean,
                                                          save_invstd)
        sum_dy, sum_dy_xhat = stoch_norm_backward_reduce(grad_y, x, save_mean, save_invstd)
        phase_dx = stoch_norm_backward_elemt(grad_y, x, w, mask, save_mean, save_invstd, sum_dy,
                                             sum_dy_xhat, x.numel() // 6)
    assert torch.equal(batch_mean, mean) and torch.equal(batch_var, var)
    torch.testing.assert_close(save_invstd, phase_invstd, rtol=1e-6, atol=0)
    torch.testing.assert_close(y, phase_y, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, (phase_dx, sum_dy_xhat, sum_dy)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_phase_opcheck(backend):
    x, params, mask = make_case((3, 4, 5), torch.float32)
    grad_y = torch.randn_like(x)
    w, b = params["weight"], params["bias"]
    ops = torch.ops.tltorch_ext
    with tltorch_ext.set_backend(backend):
        mean, var = stoch_norm_stats(x)
        invstd = var.add(EPS).rsqrt()
        sum_dy, sum_dy_xhat = stoch_norm_backward_reduce(grad_y, x, mean, invstd)
        torch.library.opcheck(ops.stoch_norm_stats.default, (x,))
        for weight, bias in ((w, b), (None, None)):
            torch.library.opcheck(ops.stoch_norm_elemt.default, (x, weight, bias, mean, invstd))
            torch.library.opcheck(
                ops.stoch_norm_backward_elemt.default,
                (grad_y, x, weight, mask, mean, invstd, sum_dy, sum_dy_xhat, 45))
        torch.library.opcheck(ops.stoch_norm_backward_reduce.default, (grad_y, x, mean, invstd))


def test_phase_bad_arguments():
    x, params, mask = make_case((3, 4, 5), torch.float32)
    stats = torch.ones(4)
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64"):
        stoch_norm_stats(x.int())
    with pytest.raises(ValueError, match="at least one value per channel"):
        stoch_norm_stats(x[:0])
    with pytest.raises(ValueError, match=r"save_invstd must have shape \(4,\)"):
        stoch_norm_elemt(x, None, None, stats, torch.ones(3))
    with pytest.raises(ValueError, match="grad_y must match x's shape"):
        stoch_norm_backward_reduce(x[:2], x, stats, stats)
    with pytest.raises(ValueError, match="grad_y must match x's shape .* and dtype"):
        stoch_norm_backward_reduce(x.double(), x, stats, stats)
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        stoch_norm_backward_elemt(x, x, None, mask.float(), stats, stats, stats, stats, 15)
    with pytest.raises(ValueError, match="count must be a positive int"):
        stoch_norm_backward_elemt(x, x, None, mask, stats, stats, stats, stats, 0)
    with pytest.raises(ValueError, match="sum_dy is on meta but x is on cpu"):
        stoch_norm_backward_elemt(x, x, None, mask, stats, stats, stats.to("meta"), stats, 15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_docs_phases_example_runs(backend):
    # docs/api_stochnorm.md's phases block: two halves through the phases equal the fused op.
    text = (Path(__file__).parents[1] / "docs" / "api_stochnorm.md").read_text()
    block = text.split("### The phases")[1].split("```python\n")[1].split("```")[0]
    with tltorch_ext.set_backend(backend):
        exec(compile(block, "api_stochnorm.md", "exec"), {})


# ---------------------------------------------------------------------------------------------
# The C++ kernels in bfloat16: float32 arithmetic on the widened values, each output rounded to
# nearest even, in every build (AVX512 and AVX2 where ATen's CPU capability allows them, and the
# baseline one)

# Sizes that are no multiple of the vector widths (8 to 32 values), so every loop has a tail: the
# spatial size S = 77 for contiguous x, C = 37 channels for channels_last.
BF16_SHAPES = {"channels-first": ((3, 5, 7, 11), False), "channels-last": ((3, 37, 5, 3), True)}


def assert_float32_rounded(out: torch.Tensor, out32: torch.Tensor):
    """out (bfloat16) is out32 rounded to nearest even. Where out32 lies within 64 float32 ulps of
    a bfloat16 rounding midpoint, float32 arithmetic in another order may round either way: one
    bfloat16 ulp is allowed there."""
    expected = out32.to(torch.bfloat16)
    dropped = out32.view(torch.int32) & 0xFFFF
    near_midpoint = (dropped - 0x8000).abs() <= 64
    exact = out.view(torch.int16) == expected.view(torch.int16)
    assert exact[~near_midpoint].all(), f"{(~exact & ~near_midpoint).sum()} values misrounded"
    ulp = torch.finfo(torch.bfloat16).eps * expected.float().abs()
    assert ((out.float() - expected.float()).abs() <= ulp)[near_midpoint].all()


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the compiled kernels are not built")
@pytest.mark.parametrize("capability", ["detected", "avx2", "default"])
@pytest.mark.parametrize("case", list(BF16_SHAPES))
def test_cpu_bfloat16_is_float32_rounded(case, capability):
    # Each capability runs the kernel build of its name (docs/api_stochnorm.md).
    detected = torch.backends.cpu.get_cpu_capability()
    if capability != "detected" and detected != capability.upper():
        if capability == "avx2" and detected != "AVX512":
            pytest.skip(f"ATen runs {detected} here: the AVX2 build is either the detected one "
                        "or not runnable")
        # ATen decides its capability once per process: the other build runs in a fresh one.
        test = f"{__file__}::test_cpu_bfloat16_is_float32_rounded[{case}-{capability}]"
        env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               test], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr
        return
    shape, cl = BF16_SHAPES[case]
    x, params, mask = make_case(shape, torch.bfloat16, cl, param_dtype=torch.float32)
    grad_y = torch.randn(shape).to(torch.bfloat16)
    grad_y = channels_last(grad_y) if cl else grad_y
    out, grads = run_op("cpu", x, params, mask, grad_y)
    out32, grads32 = run_op("cpu", x.float(), params, mask, grad_y.float())
    assert_float32_rounded(out[0], out32[0])
    assert_float32_rounded(grads[0], grads32[0])
    # The statistics and parameter gradients are float32 in both: the same computation.
    for o, o32 in zip((*out[1:], *grads[1:]), (*out32[1:], *grads32[1:])):
        torch.testing.assert_close(o, o32, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Closed forms: BatchNorm at p = 1, running statistics at p = 0, two-branch formulation


def batchnorm_like(module: nn.Module) -> nn.Module:
    """A BatchNorm of the same dimension and state as a StochNorm."""
    bn_type = {StochNorm1d: nn.BatchNorm1d, StochNorm2d: nn.BatchNorm2d,
               StochNorm3d: nn.BatchNorm3d}[type(module)]
    bn = bn_type(module.num_features, module.eps, module.momentum, module.affine,
                 module.track_running_stats, dtype=torch.float64)
    bn.load_state_dict(module.state_dict())
    bn.train(module.training)
    return bn


def randomize(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for t in (module.weight, module.bias, module.running_mean):
            t.copy_(torch.randn_like(t))
        module.running_var.copy_(torch.rand_like(module.running_var) + 0.5)
    return module


def step_both(sn, bn, x, steps=2):
    """Run both modules `steps` times on x (with fresh upstream gradients); return outputs and
    gradients of the last step."""
    for _ in range(steps):
        xs, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        grad_y = torch.randn_like(x)
        for p in (*sn.parameters(), *bn.parameters()):
            p.grad = None
        ys, yb = sn(xs), bn(xb)
        ys.backward(grad_y)
        yb.backward(grad_y)
    return (ys, xs.grad, sn.weight.grad, sn.bias.grad), (yb, xb.grad, bn.weight.grad, bn.bias.grad)


MODULES = [(StochNorm1d, (6, 4)), (StochNorm1d, (5, 4, 3)), (StochNorm2d, (3, 4, 5, 3)),
           (StochNorm3d, (2, 4, 3, 2, 3))]


@pytest.mark.parametrize("module_type,shape", MODULES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_p1_is_batchnorm_in_training(backend, module_type, shape):
    sn = randomize(module_type(4, p=1.0, dtype=torch.float64))
    bn = batchnorm_like(sn)
    x = torch.randn(shape, dtype=torch.float64) * 2 + 1
    with tltorch_ext.set_backend(backend):
        got, expected = step_both(sn, bn, x)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(sn, name), getattr(bn, name), rtol=1e-12, atol=0)
    assert int(sn.num_batches_tracked) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_p0_normalizes_with_running_stats_and_updates_them(backend):
    sn = randomize(StochNorm2d(3, momentum=0.25, p=0.0, dtype=torch.float64))
    rm, rv = sn.running_mean.clone(), sn.running_var.clone()
    x = (torch.randn(4, 3, 5, 2, dtype=torch.float64) * 3 - 2).requires_grad_()
    grad_y = torch.randn_like(x)
    with tltorch_ext.set_backend(backend):
        y = sn(x)
        y.backward(grad_y)
    scale = sn.weight / torch.sqrt(rv + EPS)
    expected = (x - per_channel(rm, 4)) * per_channel(scale, 4) + per_channel(sn.bias, 4)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    # Running statistics are constants here: dx = γ/√(σ²_R + ε)·dy.
    torch.testing.assert_close(x.grad, grad_y * per_channel(scale, 4), rtol=1e-12, atol=1e-12)
    xhat = (x - per_channel(rm, 4)) / torch.sqrt(per_channel(rv, 4) + EPS)
    torch.testing.assert_close(sn.weight.grad, (grad_y * xhat).sum((0, 2, 3)))
    torch.testing.assert_close(sn.bias.grad, grad_y.sum((0, 2, 3)))
    # ... and still update as BatchNorm: unbiased variance over the 4·5·2 = 40 values.
    batch = x.detach().transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(sn.running_mean, 0.75 * rm + 0.25 * batch.mean(1))
    torch.testing.assert_close(sn.running_var, 0.75 * rv + 0.25 * batch.var(1, unbiased=True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_mask_matches_two_branch_formulation(backend):
    # Independent float64 formulation: BatchNorm with batch statistics on the channels of the mask,
    # with (constant) running statistics elsewhere, mixed by torch.where; gradients by autograd.
    x, params, mask = make_case((4, 7, 3, 5), torch.float64)
    grad_y = torch.randn_like(x)
    out, grads = run_op(backend, x, params, mask, grad_y)
    xr = x.clone().requires_grad_()
    w = params["weight"].clone().requires_grad_()
    b = params["bias"].clone().requires_grad_()
    rm, rv = params["running_mean"], params["running_var"]
    y_batch = F.batch_norm(xr, None, None, w, b, training=True, eps=EPS)
    y_running = F.batch_norm(xr, rm, rv, w, b, training=False, eps=EPS)
    y = torch.where(per_channel(mask, 4), y_batch, y_running)
    y.backward(grad_y)
    torch.testing.assert_close(out[0], y, rtol=1e-12, atol=1e-12)
    for g, e in zip(grads, (xr.grad, w.grad, b.grad)):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    batch = x.transpose(0, 1).reshape(7, -1)
    torch.testing.assert_close(out[3], batch.mean(1))
    torch.testing.assert_close(out[4], batch.var(1, unbiased=False))
    torch.testing.assert_close(out[1], torch.where(mask, batch.mean(1), rm))


@pytest.mark.parametrize("track_running_stats", [True, False])
def test_eval_and_untracked_are_batchnorm(track_running_stats):
    sn = StochNorm2d(5, p=0.3, track_running_stats=track_running_stats, dtype=torch.float64)
    if track_running_stats:
        randomize(sn)
    bn = batchnorm_like(sn)
    x = torch.randn(3, 5, 4, 4, dtype=torch.float64)
    modes = (False,) if track_running_stats else (True, False)  # untracked: train and eval
    for training in modes:
        sn.train(training)
        bn.train(training)
        got, expected = step_both(sn, bn, x, steps=1)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e)


def test_module_mixes_per_channel():
    # With p = 0.5 each channel normalizes with exactly one of the two statistics, and both occur.
    sn = randomize(StochNorm2d(32, p=0.5, dtype=torch.float64))
    rm, rv = sn.running_mean.clone(), sn.running_var.clone()
    x = torch.randn(4, 32, 3, 3, dtype=torch.float64)
    y = sn(x).detach()
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    w, b = per_channel(sn.weight.detach(), 4), per_channel(sn.bias.detach(), 4)

    def normalized(m, v):
        return (x - per_channel(m, 4)) / torch.sqrt(per_channel(v, 4) + EPS) * w + b

    is_batch = ((y - normalized(mean, var)).abs().amax((0, 2, 3)) < 1e-10)
    is_running = ((y - normalized(rm, rv)).abs().amax((0, 2, 3)) < 1e-10)
    assert torch.all(is_batch ^ is_running)
    assert 0 < int(is_batch.sum()) < 32


# ---------------------------------------------------------------------------------------------
# Gradients, custom-op checks, torch.compile


@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend, cl):
    x, params, mask = make_case((3, 4, 3, 2), torch.float64, cl)
    x.requires_grad_()
    weight = params["weight"].requires_grad_()
    bias = params["bias"].requires_grad_()

    def fn(x, weight, bias):
        return stoch_norm(x, weight, bias, params["running_mean"], params["running_var"], mask)[0]

    with tltorch_ext.set_backend(backend):
        assert torch.autograd.gradcheck(fn, (x, weight, bias))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    x, params, mask = make_case((3, 4, 5), torch.float32)
    x.requires_grad_()
    weight, bias = params["weight"].requires_grad_(), params["bias"].requires_grad_()
    rm, rv = params["running_mean"], params["running_var"]
    ops = torch.ops.tltorch_ext
    with tltorch_ext.set_backend(backend):
        _, save_mean, save_invstd, _, _ = stoch_norm(x, weight, bias, rm, rv, mask)
        torch.library.opcheck(ops.stoch_norm_forward.default, (x, weight, bias, rm, rv, mask, EPS))
        torch.library.opcheck(ops.stoch_norm_forward.default, (x, None, None, rm, rv, mask, EPS))
        torch.library.opcheck(
            ops.stoch_norm_backward.default,
            (torch.randn_like(x), x.detach(), weight.detach(), mask, save_mean, save_invstd))


@pytest.mark.parametrize("momentum", [0.1, None])  # None: the cumulative average, a tensor factor
def test_torch_compile_fullgraph_matches_eager(momentum):
    torch._dynamo.reset()
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), StochNorm2d(6, momentum=momentum),
                          nn.ReLU())
    randomize(model[1])
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(4, 3, 5, 5)
    grad_y = torch.randn(4, 6, 5, 5)
    with torch._inductor.config.patch(fallback_random=True):
        results = []
        for net, modules in ((eager, eager), (compiled, model)):
            torch.manual_seed(7)  # the same mask draw in both
            y = net(x)
            y.backward(grad_y)
            results.append((y, modules[0].weight.grad, modules[1].weight.grad,
                            modules[1].bias.grad))
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(model[1], name), getattr(eager[1], name))


# ---------------------------------------------------------------------------------------------
# Module state and behaviour


def test_running_stats_cumulative_average_when_momentum_is_none():
    sn = StochNorm1d(3, momentum=None, p=0.5, dtype=torch.float64)
    batches = [torch.randn(8, 3, dtype=torch.float64) * (i + 1) + i for i in range(3)]
    for x in batches:
        sn(x)
    stacked = torch.stack(batches)  # (3, 8, 3)
    torch.testing.assert_close(sn.running_mean, stacked.mean(1).mean(0))
    torch.testing.assert_close(sn.running_var, stacked.var(1, unbiased=True).mean(0))
    assert int(sn.num_batches_tracked) == 3


def test_update_running_stats():
    running_mean, running_var = torch.tensor([1.0, -2.0]), torch.tensor([4.0, 0.5])
    update_running_stats(running_mean, running_var, torch.tensor([3.0, 0.0]),
                         torch.tensor([2.0, 1.0]), count=5, factor=0.5)
    # unbiased variance: 2·5/4 = 2.5 and 1·5/4 = 1.25
    torch.testing.assert_close(running_mean, torch.tensor([2.0, -1.0]))
    torch.testing.assert_close(running_var, torch.tensor([3.25, 0.875]))


def test_reproducible_under_manual_seed():
    x = torch.randn(4, 16, 3, 3)
    outputs = []
    for seed in (3, 3, 4):
        sn = StochNorm2d(16, p=0.5)
        with torch.no_grad():
            sn.running_mean.fill_(5.0)  # running and batch normalization differ clearly
        torch.manual_seed(seed)
        outputs.append(sn(x))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    assert not torch.allclose(outputs[0], outputs[2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_output_keeps_format(backend):
    for module, shape in ((StochNorm2d(4), (2, 4, 3, 5)), (StochNorm3d(4), (2, 4, 2, 3, 3))):
        x = channels_last(torch.randn(shape)).requires_grad_()
        with tltorch_ext.set_backend(backend):
            y = module(x)
            y.backward(channels_last(torch.randn(shape)))
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        assert y.is_contiguous(memory_format=fmt) and not y.is_contiguous()
        assert x.grad.is_contiguous(memory_format=fmt)


def test_state_dict_round_trip_with_batchnorm():
    bn = nn.BatchNorm2d(5)
    bn(torch.randn(4, 5, 3, 3))  # non-trivial running statistics and num_batches_tracked
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
    sn = StochNorm2d(5, p=0.3)
    sn.load_state_dict(bn.state_dict())
    back = nn.BatchNorm2d(5)
    back.load_state_dict(sn.state_dict())
    for source in (sn, back):
        for key, value in bn.state_dict().items():
            torch.testing.assert_close(source.state_dict()[key], value, rtol=0, atol=0)


class _Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(x + self.bn(self.conv(x)))


def _resnet_like():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Sequential(_Block(4), _Block(4)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6), nn.BatchNorm1d(6),
    ).double()


def test_convert_model_copies_everything():
    model = _resnet_like()
    model.train()
    for _ in range(2):
        model(torch.randn(4, 3, 6, 6, dtype=torch.float64))
    model[3][1].bn.weight.requires_grad_(False)
    model.eval()
    original = copy.deepcopy(model)
    converted = convert_model(model, p=0.4)
    assert converted is model
    assert type(converted[1]) is StochNorm2d and type(converted[7]) is StochNorm1d
    assert type(converted[3][0].bn) is StochNorm2d and type(converted[3][1].bn) is StochNorm2d
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in converted.modules())
    for name, module in original.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            new = converted.get_submodule(name)
            assert new.p == 0.4 and not new.training
            for key, value in module.state_dict().items():
                assert new.state_dict()[key].dtype == value.dtype
                torch.testing.assert_close(new.state_dict()[key], value, rtol=0, atol=0)
            assert new.weight.requires_grad == module.weight.requires_grad
    assert not converted[3][1].bn.weight.requires_grad
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(converted(x), original(x))  # evaluation: exactly BatchNorm
    # A BatchNorm passed itself comes back replaced.
    top = convert_model(nn.BatchNorm3d(2), p=0.1)
    assert type(top) is StochNorm3d and top.p == 0.1


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs():
    sn = StochNorm2d(4)
    with pytest.raises(ValueError, match="expects input of 4 dimensions"):
        sn(torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match=r"StochNorm2d\(4\) got input with 3 channels"):
        sn(torch.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match="more than one value per channel"):
        StochNorm1d(4)(torch.randn(1, 4))
    with pytest.raises(ValueError, match="more than one value per channel"):
        sn(torch.randn(1, 4, 1, 1))
    with pytest.raises(TypeError, match="floating-point"):
        sn(torch.ones(2, 4, 3, 3, dtype=torch.int64))
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"p must be a finite number in \[0, 1\]"):
            StochNorm2d(4, p=p)
    meta = StochNorm2d(4, device="meta")
    with pytest.raises(ValueError, match="weight is on meta but x is on cpu"):
        meta(torch.randn(2, 4, 3, 3))


def test_bad_op_arguments():
    x, params, mask = make_case((3, 4, 5), torch.float32)
    rm, rv = params["running_mean"], params["running_var"]
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64"):
        stoch_norm(x.int(), None, None, rm, rv, mask)
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        stoch_norm(x, None, None, rm, rv, mask.float())
    with pytest.raises(ValueError, match=r"weight must have shape \(4,\)"):
        stoch_norm(x, torch.ones(5), None, rm, rv, mask)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        stoch_norm(torch.randn(4), None, None, rm, rv, mask)


# ---------------------------------------------------------------------------------------------
# GPU: the cuda and Triton backends on CUDA tensors

GPU_SHAPES = {
    "nchw-vectorized": ((8, 16, 32, 32), False),
    "nchw-odd": ((5, 7, 13, 11), False),
    "nchw-one-channel": ((16, 1, 64, 64), False),
    "channels-last-vectorized": ((8, 64, 14, 14), True),
    "channels-last-odd": ((3, 37, 9, 7), True),
    "channels-last-wide": ((4, 2048, 7, 7), True),
    "nchw-wide": ((4, 2048, 7, 7), False),
    "2d": ((257, 129), False),
    "5d": ((2, 8, 4, 6, 6), True),
}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("case", list(GPU_SHAPES))
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_backend_matches_float64_oracle(backend, case, dtype):
    shape, cl = GPU_SHAPES[case]
    x, params, mask = make_case(shape, dtype, cl, device="cuda")
    grad_y = torch.randn(shape, dtype=torch.float64, device="cuda").to(dtype)
    out, grads = run_op(backend, x, params, mask, grad_y)
    ref_out, ref_grads = oracle64(x, params, mask, grad_y)
    for o, r in zip(out, ref_out):
        assert rel_err(o, r) < TOLERANCE[o.dtype]
    for o, r in zip(grads, ref_grads):
        assert rel_err(o, r) < TOLERANCE[dtype]
    assert out[0].stride() == x.stride() and grads[0].stride() == x.stride()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", ["nchw-vectorized", "nchw-odd", "channels-last-vectorized",
                                  "channels-last-odd", "2d"])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_phases_match_float64_sums(backend, case, dtype):
    check_phases(backend, *GPU_SHAPES[case], dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_module_and_opcheck(backend):
    sn = randomize(StochNorm2d(4, p=1.0)).cuda()
    bn = nn.BatchNorm2d(4).cuda()
    bn.load_state_dict(sn.state_dict())
    x = channels_last(torch.randn(3, 4, 5, 6, device="cuda"))
    with tltorch_ext.set_backend(backend):
        torch.testing.assert_close(sn(x), bn(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sn.running_var, bn.running_var)
        xs, params, mask = make_case((3, 4, 5), torch.float32, device="cuda")
        torch.library.opcheck(torch.ops.tltorch_ext.stoch_norm_forward.default,
                              (xs, params["weight"], params["bias"], params["running_mean"],
                               params["running_var"], mask, EPS))


def test_update_running_stats_rejects_bad_arguments():
    from tltorch_ext.ops import update_running_stats

    mean, var = torch.zeros(3), torch.ones(3)
    with pytest.raises(ValueError, match="count must be at least 2"):
        update_running_stats(mean, var, mean.clone(), var.clone(), 1, 0.1)
    with pytest.raises(ValueError, match="batch_var must have running_mean's shape"):
        update_running_stats(mean, var, mean.clone(), torch.ones(4), 8, 0.1)
    with pytest.raises(ValueError, match="is on meta"):
        update_running_stats(mean, var, mean.clone(), torch.ones(3, device="meta"), 8, 0.1)


@pytest.mark.parametrize("call, error, match", [
    (lambda: convert_model([nn.BatchNorm2d(3)], 0.5), TypeError, "module must be an nn.Module"),
    (lambda: convert_model(nn.BatchNorm2d(3), "half"), TypeError, "p must be a real number"),
    (lambda: StochNorm2d(4, p="half"), TypeError, "p must be a real number"),
    (lambda: StochNorm2d(4, p=1.5), ValueError, r"p must be a finite number in \[0, 1\]"),
    (lambda: StochNorm2d(-3), ValueError, "num_features must be a positive int"),
    (lambda: StochNorm2d(2.5), TypeError, "num_features must be an int"),
])
def test_constructor_arguments_are_named_when_wrong(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_convert_model_keeps_sync_batchnorm_on_2d_input():
    """A SyncBatchNorm may serve (N, C) input: it becomes a SyncStochNorm, which accepts every
    rank SyncBatchNorm did, not a StochNorm2d that would refuse it."""
    from tltorch_ext.finetune import SyncStochNorm

    model = nn.Sequential(nn.Linear(4, 3), nn.SyncBatchNorm(3))
    model[1].running_mean.fill_(0.5)
    converted = convert_model(model, 0.25)
    norm = converted[1]
    assert type(norm) is SyncStochNorm and norm.p == 0.25
    torch.testing.assert_close(norm.running_mean, torch.full((3,), 0.5))
    assert converted(torch.randn(6, 4)).shape == (6, 3)
    assert converted.eval()(torch.randn(2, 4)).shape == (2, 3)
