"""NST (docs/api_fsp_nst.md): every backend and both Gram sides against the (B, C_s, C_t)
pairwise kernel sums in float64 (written only here), a hand-computed case, gradients (the teacher self-term
carrying none), custom-op checks, torch.compile, the module's pooling and bad input."""
import pathlib
import re

import pytest
import torch
import torch.nn.functional as F

import tltorch_ext
from op_testing import CPU_BACKENDS, GPU_BACKENDS, rel_err, tolerances
from tltorch_ext.distill import NSTLoss
from tltorch_ext.ops import nst_loss
from tltorch_ext.ops.nst import spatial_side_is_cheaper

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "api_fsp_nst.md"
BACKENDS = CPU_BACKENDS
OPS = torch.ops.tltorch_ext
SIDES = ("spatial", "channel")
TOLERANCE = tolerances(float32=2e-5, bfloat16=2e-2, float16=3e-3)


def pairwise_kernel_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """mean k(t, t) + mean k(s, s) − 2 mean k(s, t), k(a, b) = (a·b)², over (B, C_a, C_b) pairs of
    normalized channels, the first term detached; float64."""
    s = F.normalize(f_s.double().flatten(2), dim=2, eps=1e-12)
    t = F.normalize(f_t.double().flatten(2), dim=2, eps=1e-12)

    def kernel(a, b):
        return (a[:, :, None, :] * b[:, None, :, :]).sum(-1).square()

    return kernel(t, t).detach().mean() + kernel(s, s).mean() - 2 * kernel(s, t).mean()


def maps(batch, channels, spatial, dtype=torch.float32, grad=True, device="cpu"):
    x = torch.randn(batch, channels, *spatial, dtype=torch.float64).to(device=device, dtype=dtype)
    return x.requires_grad_(grad)


def oracle(f_s, f_t):
    leaves = [x.detach().double().requires_grad_() for x in (f_s, f_t)]
    value = pairwise_kernel_loss(*leaves)
    return value, torch.autograd.grad(value, leaves)


def check_against_oracle(f_s, f_t, loss, grads, dtype=torch.float32):
    expected, expected_grads = oracle(f_s, f_t)
    assert loss.shape == () and loss.dtype == f_s.dtype
    assert rel_err(loss, expected) < TOLERANCE[dtype]
    for grad, ref in zip(grads, expected_grads):
        assert grad.dtype == f_s.dtype and grad.shape == ref.shape
        assert rel_err(grad, ref) < TOLERANCE[dtype]


# (batch, C_s, C_t, H×W): channel counts differing, odd and non-square maps, HW below and above
# the channel counts; the larger ones reach the CPU kernel's long-row path.
SMALL = [(3, 5, 7, (3, 5)), (2, 3, 18, (1, 7))]
LARGE = [(4, 20, 9, (16, 17)), (3, 70, 33, (5, 3))]


def cases(backend):
    return SMALL if backend == "triton" else SMALL + LARGE


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("backend,case", [(b, c) for b in BACKENDS for c in cases(b)])
def test_loss_and_gradients_match_pairwise_kernel_sums(backend, case, side):
    batch, c_s, c_t, spatial = case
    f_s, f_t = maps(batch, c_s, spatial), maps(batch, c_t, spatial)
    with torch.no_grad():
        f_s[0, 1] = 0.0  # a dead channel: norm 0, normalized by ε
    with tltorch_ext.set_backend(backend):
        loss = nst_loss(f_s, f_t, gram=side)
        grads = torch.autograd.grad(loss, (f_s, f_t))
    check_against_oracle(f_s, f_t, loss, grads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_both_gram_sides_agree_and_auto_picks_one(backend):
    for spatial in [(2, 3), (9, 9)]:  # HW below, then above, the channel counts
        f_s, f_t = maps(2, 12, spatial), maps(2, 10, spatial)
        with tltorch_ext.set_backend(backend):
            losses = [nst_loss(f_s, f_t, gram=side) for side in ("spatial", "channel", "auto")]
            grads = [torch.autograd.grad(loss, (f_s, f_t)) for loss in losses]
        assert rel_err(losses[0], losses[1]) < 1e-5 and rel_err(losses[2], losses[1]) < 1e-5
        for a, b in zip(grads[0], grads[1]):
            assert rel_err(a, b) < 1e-5


def test_side_choice_follows_the_cost():
    assert spatial_side_is_cheaper(2048, 2048, 49)  # ResNet-50's last stage
    assert not spatial_side_is_cheaper(16, 16, 1024)  # CIFAR's first stage
    assert spatial_side_is_cheaper(64, 64, 64) and not spatial_side_is_cheaper(64, 64, 65)
    assert spatial_side_is_cheaper(100, 28, 64) and not spatial_side_is_cheaper(16, 64, 49)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_loss(backend):
    # s = (e1, e2), t = (e1): mean k(t, t) = 1, mean k(s, s) = 2/4, mean k(s, t) = 1/2 → 0.5.
    f_s = torch.tensor([[[3.0, 0.0], [0.0, 0.5]]])
    f_t = torch.tensor([[[2.0, 0.0]]])
    with tltorch_ext.set_backend(backend):
        for side in SIDES:
            assert nst_loss(f_s, f_t, gram=side).item() == pytest.approx(0.5, rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_other_dtypes(backend, dtype):
    f_s, f_t = maps(2, 6, (3, 5), dtype), maps(2, 4, (3, 5), dtype)
    for side in SIDES:
        with tltorch_ext.set_backend(backend):
            loss = nst_loss(f_s, f_t, gram=side)
            grads = torch.autograd.grad(loss, (f_s, f_t))
        check_against_oracle(f_s, f_t, loss, grads, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_and_channels_last_inputs(backend):
    f_s, f_t = maps(2, 6, (3, 5), grad=False), maps(2, 9, (3, 5), grad=False)
    layouts = (f_s.contiguous(memory_format=torch.channels_last),
               torch.randn(2, 9, 3, 10)[..., ::2].copy_(f_t))
    expected = pairwise_kernel_loss(f_s, f_t)
    with tltorch_ext.set_backend(backend):
        for side in SIDES:
            assert rel_err(nst_loss(*layouts, gram=side), expected) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_reach_only_inputs_that_require_them(backend):
    f_s, f_t = maps(2, 5, (2, 3)), maps(2, 4, (2, 3), grad=False)
    _, (expected, _) = oracle(f_s, f_t)
    with tltorch_ext.set_backend(backend):
        for side in SIDES:
            f_s.grad = None
            nst_loss(f_s, f_t, gram=side).backward()
            assert rel_err(f_s.grad, expected) < TOLERANCE[torch.float32]
            assert f_t.grad is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    # The teacher self-term is detached, so the loss's numerical derivative in f_t differs from
    # its gradient by design: check f_s numerically and f_t against the oracle.
    f_s = maps(2, 3, (2, 2), torch.float64)
    f_t = maps(2, 2, (2, 2), torch.float64, grad=False)
    with tltorch_ext.set_backend(backend):
        for side in SIDES:
            assert torch.autograd.gradcheck(lambda x: nst_loss(x, f_t, gram=side), (f_s,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    f_s = torch.randn(2, 3, 5, requires_grad=True)
    f_t = torch.randn(2, 4, 5, requires_grad=True)
    with tltorch_ext.set_backend(backend):
        for spatial in (True, False):
            torch.library.opcheck(OPS.nst_forward.default, (f_s, f_t, spatial))
            _, norm_s, norm_t = OPS.nst_forward(f_s.detach(), f_t.detach(), spatial)
            for need_s, need_t in ((True, True), (True, False), (False, True)):
                torch.library.opcheck(
                    OPS.nst_backward.default,
                    (torch.tensor(0.7), f_s.detach(), f_t.detach(), norm_s, norm_t, spatial,
                     need_s, need_t))


def student_teacher_maps():
    g_s = [maps(2, 4, (8, 6)), maps(2, 6, (4, 3))]
    g_t = [maps(2, 7, (6, 6), grad=False), maps(2, 5, (4, 5), grad=False)]
    return g_s, g_t


def test_module_pools_to_the_smaller_map_and_matches_pairwise_sums():
    g_s, g_t = student_teacher_maps()
    losses = NSTLoss()(g_s, g_t)
    # By hand: (8, 6) vs (6, 6) → (6, 6) for the student; (4, 3) vs (4, 5) → (4, 3) for the teacher.
    expected = [pairwise_kernel_loss(F.adaptive_avg_pool2d(g_s[0], (6, 6)), g_t[0]),
                pairwise_kernel_loss(g_s[1], F.adaptive_avg_pool2d(g_t[1], (4, 3)))]
    assert len(losses) == 2
    for loss, ref in zip(losses, expected):
        assert rel_err(loss, ref) < TOLERANCE[torch.float32]
    sum(losses).backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in g_s)


def test_torch_compile_fullgraph_matches_eager():
    g_s, g_t = student_teacher_maps()
    module = NSTLoss()
    compiled = torch.compile(module, fullgraph=True)
    eager_losses = module(g_s, g_t)
    eager_grads = torch.autograd.grad(sum(eager_losses), g_s)
    compiled_losses = compiled(g_s, g_t)
    compiled_grads = torch.autograd.grad(sum(compiled_losses), g_s)
    for a, b in zip(compiled_losses + list(compiled_grads), eager_losses + list(eager_grads)):
        assert rel_err(a, b) < 1e-6


# Bad input


def test_op_rejects_bad_input():
    f_s, f_t = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    with pytest.raises(ValueError, match="f_t has batch size 3 but f_s has 2"):
        nst_loss(f_s, torch.randn(3, 5, 4, 4))
    with pytest.raises(ValueError, match="same spatial size"):
        nst_loss(f_s, torch.randn(2, 5, 4, 3))
    with pytest.raises(ValueError, match=r"f_s must be a \(B, C, H, W\) or \(B, C, HW\)"):
        nst_loss(f_s[0, 0], f_t[0, 0])
    with pytest.raises(TypeError, match="f_t must be float16, bfloat16, float32 or float64"):
        nst_loss(f_s, f_t.int())
    with pytest.raises(TypeError, match="f_t is torch.float16 but f_s is torch.float32"):
        nst_loss(f_s, f_t.half())
    with pytest.raises(ValueError, match="gram must be one of"):
        nst_loss(f_s, f_t, gram="pixels")


def test_module_rejects_bad_input():
    g_s, g_t = student_teacher_maps()
    with pytest.raises(ValueError, match="equal length, got 2 and 1"):
        NSTLoss()(g_s, g_t[:1])
    with pytest.raises(ValueError, match=r"g_t\[0\] must be a \(B, C, H, W\) feature map"):
        NSTLoss()(g_s[:1], [g_t[0].flatten(2)])
    with pytest.raises(TypeError, match="g_s must be a list of feature maps"):
        NSTLoss()(g_s[0], g_t[0])


# GPU (a CUDA device only)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", [(8, 256, 512, (14, 14)), (4, 129, 65, (7, 9))])
def test_gpu_backend_matches_pairwise_kernel_sums(backend, dtype, side, case):
    batch, c_s, c_t, spatial = case
    f_s = maps(batch, c_s, spatial, dtype, device="cuda")
    f_t = maps(batch, c_t, spatial, dtype, device="cuda")
    with tltorch_ext.set_backend(backend):
        loss = nst_loss(f_s, f_t, gram=side)
        grads = torch.autograd.grad(loss, (f_s, f_t))
    check_against_oracle(f_s, f_t, loss, grads, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_opcheck(backend):
    f_s = torch.randn(2, 3, 17, device="cuda", requires_grad=True)
    f_t = torch.randn(2, 5, 17, device="cuda", requires_grad=True)
    with tltorch_ext.set_backend(backend):
        for spatial in (True, False):
            torch.library.opcheck(OPS.nst_forward.default, (f_s, f_t, spatial))


def test_docs_examples_run():
    """Every python block of docs/api_fsp_nst.md runs."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(blocks) == 3
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), {})


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("side", SIDES)
def test_student_close_to_teacher_precision(backend, side):
    # The loss is a tiny difference of kernel terms here. The spatial side keeps float32 relative
    # accuracy; the channel side's error is float32 rounding of the terms (documented).
    f_t = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    f_s = f_t + 1e-3 * torch.randn_like(f_t)
    expected = pairwise_kernel_loss(f_s, f_t)
    t = F.normalize(f_t.flatten(2), dim=2)
    term_scale = (t @ t.transpose(1, 2)).square().mean()
    with tltorch_ext.set_backend(backend):
        loss = nst_loss(f_s.float(), f_t.float(), gram=side)
        exact = nst_loss(f_s, f_t, gram=side)
    assert loss.dtype == torch.float32
    assert rel_err(exact, expected) < 1e-9
    if side == "spatial":
        assert rel_err(loss, expected) < 1e-3
    else:
        assert abs(loss.double() - expected).item() < 1e-5 * term_scale.item()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_channel_side_keeps_its_accuracy_as_the_student_nears_the_teacher(backend):
    # Three O(1) terms cancel to a loss of ~3e-8 here; float32 Grams left 1e-4..1e-2 of it.
    torch.manual_seed(0)
    f_t = torch.randn(4, 32, 8, 8)
    f_s = f_t + 1e-3 * torch.randn_like(f_t)
    expected = nst_loss(f_s.double(), f_t.double(), gram="spatial")
    with tltorch_ext.set_backend(backend):
        loss = nst_loss(f_s, f_t, gram="channel")
    assert loss.dtype == torch.float32
    assert rel_err(loss, expected) < 1e-6
