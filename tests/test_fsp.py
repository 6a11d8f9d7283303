"""FSP (docs/api_fsp_nst.md): every backend against a direct broadcast formulation in float64
(written only here), a hand-computed case, gradients, custom-op checks, torch.compile, the
module's pooling and bad input."""
import pytest
import torch
import torch.nn.functional as F

import tltorch_ext
from op_testing import CPU_BACKENDS, GPU_BACKENDS, rel_err, tolerances
from tltorch_ext.distill import FSP
from tltorch_ext.ops import fsp_loss, fsp_matrix

BACKENDS = CPU_BACKENDS
OPS = torch.ops.tltorch_ext
# ‖out − ref‖ / ‖ref‖ bounds against the float64 oracle (bfloat16: output rounding, and the Triton
# interpreter truncates float32 → bfloat16).
TOLERANCE = tolerances(float32=1e-5, bfloat16=1.5e-2, float16=2e-3)


def broadcast_gram(bot: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """G = (top[:, :, None, :] · bot[:, None, :, :]).mean(-1) on (B, C, H, W) maps, float64."""
    bot, top = bot.double().flatten(2), top.double().flatten(2)
    return (top[:, :, None, :] * bot[:, None, :, :]).mean(-1)


def broadcast_loss(bot_s, top_s, bot_t, top_t) -> torch.Tensor:
    return (broadcast_gram(bot_s, top_s) - broadcast_gram(bot_t, top_t)).square().mean()


def maps(batch, channels, spatial, dtype=torch.float32, grad=True, device="cpu"):
    x = torch.randn(batch, channels, *spatial, dtype=torch.float64).to(device=device, dtype=dtype)
    return x.requires_grad_(grad)


def oracle_grads(inputs, loss_fn):
    """The float64 oracle's value and gradients at the same points."""
    leaves = [x.detach().double().requires_grad_() for x in inputs]
    value = loss_fn(*leaves)
    return value, torch.autograd.grad(value, leaves)


# (batch, C_bot, C_top, student H×W, teacher H×W): odd, non-square, student and teacher sizes
# differing; the larger ones cross the CPU kernel's row blocks and its long-row path.
SMALL = [(3, 5, 7, (3, 5), (2, 3)), (2, 17, 3, (1, 19), (4, 4))]
LARGE = [(5, 9, 70, (16, 17), (15, 18)), (4, 33, 65, (7, 9), (5, 5))]


def cases(backend):
    return SMALL if backend == "triton" else SMALL + LARGE


@pytest.mark.parametrize("backend,case", [(b, c) for b in BACKENDS for c in cases(b)])
def test_loss_and_gradients_match_broadcast_formulation(backend, case):
    batch, c_bot, c_top, hw_s, hw_t = case
    inputs = [maps(batch, c_bot, hw_s), maps(batch, c_top, hw_s),
              maps(batch, c_bot, hw_t), maps(batch, c_top, hw_t)]
    with tltorch_ext.set_backend(backend):
        loss = fsp_loss(*inputs)
        grads = torch.autograd.grad(loss, inputs)
    expected, expected_grads = oracle_grads(inputs, broadcast_loss)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert rel_err(loss, expected) < TOLERANCE[torch.float32]
    for grad, ref in zip(grads, expected_grads):
        assert rel_err(grad, ref) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("backend", BACKENDS)
def test_matrix_and_its_gradients_match_broadcast_formulation(backend):
    bot, top = maps(3, 6, (3, 7)), maps(3, 5, (3, 7))
    upstream = torch.randn(3, 5, 6)
    with tltorch_ext.set_backend(backend):
        gram = fsp_matrix(bot, top)
        grads = torch.autograd.grad(gram, (bot, top), upstream)
    expected, expected_grads = oracle_grads(
        (bot, top), lambda b, t: (broadcast_gram(b, t) * upstream.double()).sum())
    assert gram.shape == (3, 5, 6) and gram.dtype == torch.float32
    assert rel_err(gram, broadcast_gram(bot, top)) < TOLERANCE[torch.float32]
    for grad, ref in zip(grads, expected_grads):
        assert rel_err(grad, ref) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_loss(backend):
    # Student: G = (1·1 + 1·0)/2 = 0.5; teacher: G = (2·0 + 2·1)/2 = 1; loss (0.5 − 1)² = 0.25.
    bot_s, top_s = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[1.0, 1.0]]])
    bot_t, top_t = torch.tensor([[[0.0, 1.0]]]), torch.tensor([[[2.0, 2.0]]])
    with tltorch_ext.set_backend(backend):
        assert fsp_loss(bot_s, top_s, bot_t, top_t).item() == pytest.approx(0.25, rel=1e-6)
        assert fsp_matrix(bot_s, top_s).flatten().tolist() == pytest.approx([0.5])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_other_dtypes(backend, dtype):
    inputs = [maps(2, 5, (3, 5), dtype), maps(2, 9, (3, 5), dtype),
              maps(2, 5, (4, 3), dtype), maps(2, 9, (4, 3), dtype)]
    with tltorch_ext.set_backend(backend):
        loss = fsp_loss(*inputs)
        grads = torch.autograd.grad(loss, inputs)
    expected, expected_grads = oracle_grads(inputs, broadcast_loss)
    assert loss.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert rel_err(loss, expected) < TOLERANCE[dtype]
    for grad, ref in zip(grads, expected_grads):
        assert rel_err(grad, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_and_channels_last_inputs(backend):
    base = [maps(2, 6, (5, 3), grad=False), maps(2, 4, (5, 3), grad=False),
            maps(2, 6, (3, 3), grad=False), maps(2, 4, (3, 3), grad=False)]
    layouts = [x.contiguous(memory_format=torch.channels_last) for x in base[:2]]
    layouts += [torch.randn(2, 6, 3, 6)[..., ::2].copy_(base[2]),
                base[3].transpose(2, 3).contiguous().transpose(2, 3)]
    with tltorch_ext.set_backend(backend):
        assert rel_err(fsp_loss(*layouts), broadcast_loss(*base)) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_reach_only_inputs_that_require_them(backend):
    bot_s, top_s = maps(2, 3, (3, 3)), maps(2, 4, (3, 3))
    bot_t, top_t = maps(2, 3, (3, 3), grad=False), maps(2, 4, (3, 3), grad=False)
    with tltorch_ext.set_backend(backend):
        fsp_loss(bot_s, top_s, bot_t, top_t).backward()
    _, expected = oracle_grads([bot_s, top_s, bot_t, top_t], broadcast_loss)
    assert rel_err(bot_s.grad, expected[0]) < TOLERANCE[torch.float32]
    assert rel_err(top_s.grad, expected[1]) < TOLERANCE[torch.float32]
    assert bot_t.grad is None and top_t.grad is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_keeps_the_difference_only_when_asked(backend):
    inputs = [maps(2, 3, (2, 5)), maps(2, 4, (2, 5)), maps(2, 3, (3, 2)), maps(2, 4, (3, 2))]
    flat = [x.flatten(2) for x in inputs]
    with tltorch_ext.set_backend(backend):
        loss_kept, diff = OPS.fsp_forward(*flat, True)
        loss_bare, empty = OPS.fsp_forward(*flat, False)
        # Backward recomputes D when the forward did not keep it.
        grads = torch.autograd.grad(loss_bare, inputs)
    expected_diff = broadcast_gram(*inputs[:2]) - broadcast_gram(*inputs[2:])
    assert empty.numel() == 0 and diff.dtype == torch.float32
    assert rel_err(diff, expected_diff) < TOLERANCE[torch.float32]
    assert loss_kept.item() == pytest.approx(loss_bare.item(), rel=1e-6)
    _, expected_grads = oracle_grads(inputs, broadcast_loss)
    for grad, ref in zip(grads, expected_grads):
        assert rel_err(grad, ref) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    inputs = [maps(2, 2, (2, 3), torch.float64), maps(2, 3, (2, 3), torch.float64),
              maps(2, 2, (1, 4), torch.float64), maps(2, 3, (1, 4), torch.float64)]
    with tltorch_ext.set_backend(backend):
        assert torch.autograd.gradcheck(fsp_loss, inputs)
        assert torch.autograd.gradcheck(fsp_matrix, inputs[:2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    bot_s, top_s, bot_t, top_t = (torch.randn(2, c, hw, requires_grad=True)
                                  for c, hw in ((3, 5), (4, 5), (3, 7), (4, 7)))
    diff, grad = torch.randn(2, 4, 3), torch.tensor(0.5)
    with tltorch_ext.set_backend(backend):
        torch.library.opcheck(OPS.fsp_matrix.default, (bot_s, top_s))
        for keep_diff in (True, False):
            torch.library.opcheck(OPS.fsp_forward.default, (bot_s, top_s, bot_t, top_t, keep_diff))
        torch.library.opcheck(OPS.fsp_backward.default, (diff, bot_s.detach(), False, 0.3, grad))
        torch.library.opcheck(OPS.fsp_backward.default, (diff, top_t.detach(), True, -0.2, None))


def student_teacher_maps(grad=True):
    g_s = [maps(2, 4, (8, 6), grad=grad), maps(2, 6, (4, 3), grad=grad),
           maps(2, 8, (4, 3), grad=grad)]
    g_t = [maps(2, 4, (6, 6), grad=False), maps(2, 6, (3, 3), grad=False),
           maps(2, 8, (2, 2), grad=False)]
    return g_s, g_t


def test_module_pools_to_the_smaller_map_and_matches_broadcast():
    g_s, g_t = student_teacher_maps()
    fsp = FSP([g.shape for g in g_s], [g.shape for g in g_t])
    losses = fsp(g_s, g_t)
    assert len(losses) == 2
    # Pooling by hand: student (8, 6) → (4, 3) for pair 0; teacher (6, 6) → (3, 3), (3, 3) → (2, 2).
    expected = [
        broadcast_loss(F.adaptive_avg_pool2d(g_s[0], (4, 3)), g_s[1],
                       F.adaptive_avg_pool2d(g_t[0], (3, 3)), g_t[1]),
        broadcast_loss(g_s[1], g_s[2], F.adaptive_avg_pool2d(g_t[1], (2, 2)), g_t[2]),
    ]
    for loss, ref in zip(losses, expected):
        assert rel_err(loss, ref) < TOLERANCE[torch.float32]
    sum(losses).backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in g_s)
    assert all(g.grad is None for g in g_t)


def test_module_pools_non_square_maps_both_ways():
    # (4, 8) against (8, 4): both go to (4, 4).
    bot, top = maps(2, 3, (4, 8), grad=False), maps(2, 5, (8, 4), grad=False)
    fsp = FSP([bot.shape, top.shape], [bot.shape, top.shape])
    loss = fsp([bot, top], [bot.flip(0), top.flip(0)])[0]
    pooled = F.adaptive_avg_pool2d(bot, (4, 4)), F.adaptive_avg_pool2d(top, (4, 4))
    expected = broadcast_loss(*pooled, pooled[0].flip(0), pooled[1].flip(0))
    assert rel_err(loss, expected) < TOLERANCE[torch.float32]


def test_torch_compile_fullgraph_matches_eager():
    g_s, g_t = student_teacher_maps()
    fsp = FSP([g.shape for g in g_s], [g.shape for g in g_t])
    compiled = torch.compile(fsp, fullgraph=True)
    eager_losses = fsp(g_s, g_t)
    eager_grads = torch.autograd.grad(sum(eager_losses), g_s)
    compiled_losses = compiled(g_s, g_t)
    compiled_grads = torch.autograd.grad(sum(compiled_losses), g_s)
    for a, b in zip(compiled_losses + list(compiled_grads), eager_losses + list(eager_grads)):
        assert rel_err(a, b) < 1e-6


# Bad input


def test_module_rejects_channel_mismatch_between_student_and_teacher():
    with pytest.raises(ValueError, match="layer 1: the student has 8 channels and the teacher 6"):
        FSP([(2, 4, 8, 8), (2, 8, 4, 4)], [(2, 4, 8, 8), (2, 6, 4, 4)])


@pytest.mark.parametrize("s_shapes,t_shapes,match", [
    ([(2, 4, 8, 8)], [(2, 4, 8, 8)], "at least two"),
    ([(2, 4, 8, 8), (2, 4, 8)], [(2, 4, 8, 8), (2, 4, 8, 8)], r"\(B, C, H, W\)"),
    ([(2, 4, 8, 8)] * 3, [(2, 4, 8, 8)] * 2, "same length"),
])
def test_module_rejects_bad_shape_lists(s_shapes, t_shapes, match):
    with pytest.raises(ValueError, match=match):
        FSP(s_shapes, t_shapes)


def test_module_rejects_maps_unlike_the_declared_shapes():
    g_s, g_t = student_teacher_maps(grad=False)
    fsp = FSP([g.shape for g in g_s], [g.shape for g in g_t])
    with pytest.raises(ValueError, match="must hold 3 feature maps"):
        fsp(g_s[:2], g_t)
    with pytest.raises(ValueError, match=r"g_t\[1\] has 5 channels, but 6 were declared"):
        fsp(g_s, [g_t[0], g_t[1][:, :5], g_t[2]])
    with pytest.raises(ValueError, match=r"g_s\[0\] must be a \(B, C, H, W\) feature map"):
        fsp([g_s[0].flatten(2)] + g_s[1:], g_t)


def test_op_rejects_bad_input():
    bot, top = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    with pytest.raises(ValueError, match="bot_s has 3 channels but bot_t has 4"):
        fsp_loss(bot, top, torch.randn(2, 4, 4, 4), top)
    with pytest.raises(ValueError, match="batch size 3 but top_s has 2"):
        fsp_loss(bot, top, torch.randn(3, 3, 4, 4), torch.randn(3, 5, 4, 4))
    with pytest.raises(ValueError, match="same spatial size"):
        fsp_loss(bot, torch.randn(2, 5, 4, 2), bot, top)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) or \(B, C, HW\)"):
        fsp_matrix(bot[0, 0], top[0, 0])
    with pytest.raises(TypeError, match="bot must be float16, bfloat16, float32 or float64"):
        fsp_matrix(bot.long(), top)
    with pytest.raises(TypeError, match="bot_t is torch.float64 but top_s is torch.float32"):
        fsp_loss(bot, top, bot.double(), top)
    with pytest.raises(ValueError, match="must not be empty"):
        fsp_matrix(bot[:, :0], top)


# GPU (a CUDA device only)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", [(32, 256, 256, (14, 14), (14, 14)),
                                  (8, 65, 129, (9, 11), (7, 7))])
def test_gpu_backend_matches_broadcast_formulation(backend, dtype, case):
    batch, c_bot, c_top, hw_s, hw_t = case
    inputs = [maps(batch, c, hw, dtype, device="cuda")
              for c, hw in ((c_bot, hw_s), (c_top, hw_s), (c_bot, hw_t), (c_top, hw_t))]
    with tltorch_ext.set_backend(backend):
        loss = fsp_loss(*inputs)
        grads = torch.autograd.grad(loss, inputs)
        gram = fsp_matrix(*inputs[:2])
    expected, expected_grads = oracle_grads(inputs, broadcast_loss)
    assert rel_err(loss, expected) < TOLERANCE[dtype]
    assert rel_err(gram, broadcast_gram(*inputs[:2])) < TOLERANCE[dtype]
    for grad, ref in zip(grads, expected_grads):
        assert rel_err(grad, ref) < TOLERANCE[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_opcheck(backend):
    args = [torch.randn(2, 3, 17, device="cuda", requires_grad=True) for _ in range(2)]
    with tltorch_ext.set_backend(backend):
        torch.library.opcheck(OPS.fsp_forward.default, (args[0], args[1], args[0], args[1], True))
        torch.library.opcheck(OPS.fsp_matrix.default, tuple(args))


def test_flattened_and_4d_maps_of_the_same_size_mix():
    bot, top = torch.randn(2, 3, 4, 5), torch.randn(2, 6, 20)
    expected = torch.bmm(top, bot.flatten(2).transpose(1, 2)) / 20
    torch.testing.assert_close(tltorch_ext.ops.fsp_matrix(bot, top), expected)
    with pytest.raises(ValueError, match="same spatial size"):
        tltorch_ext.ops.fsp_matrix(bot, torch.randn(2, 6, 21))
