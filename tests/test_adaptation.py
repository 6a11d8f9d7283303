"""Gradient reversal and DANN: hand-computed values, gradients, compile, autocast, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tltorch_ext.adaptation import (
    DomainAdversarialLoss,
    DomainDiscriminator,
    GradientReverseLayer,
    WarmStartGradientReverseLayer,
    grad_reverse,
)


def softplus(z):
    return math.log1p(math.exp(z))


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def reversed_grad(module_or_fn, x, upstream, *args):
    x = x.clone().requires_grad_(True)
    y = module_or_fn(x, *args)
    assert torch.equal(y, x)
    y.backward(upstream)
    return x.grad


# ---------------------------------------------------------------- gradient reversal
@pytest.mark.parametrize("coeff", [0.5, torch.tensor(0.5), 2])
def test_grad_reverse_is_identity_with_negated_scaled_gradient(coeff):
    upstream = torch.tensor([1.0, -2.0, 3.0])
    grad = reversed_grad(grad_reverse, torch.randn(3), upstream, coeff)
    assert torch.allclose(grad, -float(coeff) * upstream)


def test_gradient_reverse_layer_default_coeff_is_one():
    upstream = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    grad = reversed_grad(GradientReverseLayer(), torch.randn(2, 2), upstream)
    assert torch.equal(grad, -upstream)


def test_grad_reverse_keeps_half_precision_gradient_dtype():
    x = torch.randn(4, dtype=torch.bfloat16, requires_grad=True)
    grad_reverse(x, torch.tensor(0.25)).sum().backward()
    assert x.grad.dtype == torch.bfloat16
    assert torch.equal(x.grad, torch.full((4,), -0.25, dtype=torch.bfloat16))


def test_grad_reverse_under_torch_compile():
    compiled = torch.compile(
        lambda x, c: grad_reverse(x, c) * 3.0, backend="aot_eager", fullgraph=True
    )
    for coeff in (0.5, 0.75):
        x = torch.randn(5, requires_grad=True)
        compiled(x, coeff).sum().backward()
        assert torch.allclose(x.grad, torch.full((5,), -3.0 * coeff))


def test_warm_start_schedule_hand_values():
    # coeff(i) = 2 (hi - lo) / (1 + exp(-a i / M)) - (hi - lo) + lo = (hi - lo) tanh(a i / 2M) + lo
    default = WarmStartGradientReverseLayer()
    assert default.coeff == 0.0
    for _ in range(1000):
        default.step()
    assert default.coeff == pytest.approx(0.46211715726000974, abs=1e-6)  # tanh(1/2)

    layer = WarmStartGradientReverseLayer(alpha=10.0, lo=0.2, hi=1.0, max_iters=100)
    assert layer.coeff == pytest.approx(0.2, abs=1e-7)
    for _ in range(50):
        layer.step()
    assert int(layer.iter_num) == 50
    expected = 0.8 * 0.9866142981514303 + 0.2  # 0.8 tanh(2.5) + 0.2
    assert layer.coeff == pytest.approx(expected, abs=1e-6)
    upstream = torch.tensor([1.0, -1.0])
    grad = reversed_grad(layer, torch.zeros(2), upstream)
    assert torch.allclose(grad, -expected * upstream)
    assert int(layer.iter_num) == 50  # auto_step is off


def test_warm_start_auto_step_only_in_training():
    layer = WarmStartGradientReverseLayer(alpha=1.0, lo=0.0, hi=1.0, max_iters=2, auto_step=True)
    upstream = torch.ones(3)
    # The coefficient used is the one before the step: 0, then tanh(1/4), then tanh(1/2).
    expected = [0.0, math.tanh(0.25), math.tanh(0.5)]
    for i, coeff in enumerate(expected):
        assert int(layer.iter_num) == i
        assert torch.allclose(reversed_grad(layer, torch.zeros(3), upstream), -coeff * upstream)
    layer.eval()
    layer(torch.zeros(3))
    assert int(layer.iter_num) == 3


def test_warm_start_under_torch_compile_uses_the_coefficient_before_the_step():
    layer = WarmStartGradientReverseLayer(alpha=1.0, max_iters=2, auto_step=True)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    for i in range(3):
        x = torch.zeros(4, requires_grad=True)
        # Two calls before one backward: each must keep its own coefficient.
        (compiled(x).sum() + compiled(x).sum()).backward()
        expected = math.tanh((2 * i) / 4) + math.tanh((2 * i + 1) / 4)
        assert torch.allclose(x.grad, torch.full((4,), -expected)), i
    assert int(layer.iter_num) == 6


def test_warm_start_state_dict_round_trip():
    layer = WarmStartGradientReverseLayer(alpha=5.0, max_iters=10)
    for _ in range(7):
        layer.step()
    state = layer.state_dict()
    assert int(state["iter_num"]) == 7
    restored = WarmStartGradientReverseLayer(alpha=5.0, max_iters=10)
    restored.load_state_dict(state)
    assert restored.coeff == layer.coeff == pytest.approx(math.tanh(5.0 * 7 / 20), abs=1e-6)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: grad_reverse(torch.ones(2), "1"), TypeError, "coeff must be a real number"),
        (lambda: grad_reverse(torch.ones(2), torch.ones(2)), TypeError, r"shape \(2,\)"),
        (lambda: grad_reverse(torch.ones(2), torch.tensor(1)), TypeError, "torch.int64"),
        (lambda: grad_reverse([1.0], 1.0), TypeError, "x must be a torch.Tensor"),
        (lambda: WarmStartGradientReverseLayer(max_iters=0), ValueError, "max_iters"),
        (lambda: WarmStartGradientReverseLayer(alpha=float("nan")), ValueError, "alpha"),
        (lambda: WarmStartGradientReverseLayer(hi="1"), TypeError, "hi must be a real number"),
    ],
)
def test_gradient_reversal_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- DANN
def fixed_linear(weight, bias):
    layer = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


F_S = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
F_T = torch.tensor([[2.0, 1.0], [0.0, 0.0], [1.0, 2.0]])
# Discriminator z = f0 - f1 + 0.5: source logits (1.5, -0.5), target logits (1.5, 0.5, -0.5).
Z_S, Z_T = [1.5, -0.5], [1.5, 0.5, -0.5]
BCE_S = [softplus(-z) for z in Z_S]  # label 1: -log sigmoid(z)
BCE_T = [softplus(z) for z in Z_T]  # label 0: -log(1 - sigmoid(z))


def sigmoid_dann(reduction="mean"):
    disc = fixed_linear([[1.0, -1.0]], [0.5])
    return DomainAdversarialLoss(disc, reduction=reduction, grl=GradientReverseLayer()), disc


def test_dann_sigmoid_hand_values_and_accuracy():
    loss_fn, _ = sigmoid_dann()
    loss = loss_fn(F_S, F_T)
    assert loss.item() == pytest.approx(0.5 * (sum(BCE_S) / 2 + sum(BCE_T) / 3), rel=1e-6)
    # Source right when z >= 0 (1 of 2), target right when z < 0 (1 of 3).
    assert float(loss_fn.domain_discriminator_accuracy) == pytest.approx(0.5 * (50.0 + 100.0 / 3))


def test_dann_reductions_and_weights():
    w_s, w_t = [2.0, 0.5], [1.0, 0.0, 3.0]
    weighted_s = [w * b for w, b in zip(w_s, BCE_S)]
    weighted_t = [w * b for w, b in zip(w_t, BCE_T)]
    args = (F_S, F_T, torch.tensor(w_s), torch.tensor(w_t))
    assert sigmoid_dann("mean")[0](*args).item() == pytest.approx(
        0.5 * (sum(weighted_s) / 2 + sum(weighted_t) / 3), rel=1e-6
    )
    assert sigmoid_dann("sum")[0](*args).item() == pytest.approx(
        0.5 * (sum(weighted_s) + sum(weighted_t)), rel=1e-6
    )
    per_sample = sigmoid_dann("none")[0](*args)
    assert torch.allclose(per_sample, 0.5 * torch.tensor(weighted_s + weighted_t))


def test_dann_gradients_reversed_for_features_not_for_discriminator():
    loss_fn, disc = sigmoid_dann()
    f_s, f_t = F_S.clone().requires_grad_(True), F_T.clone().requires_grad_(True)
    loss_fn(f_s, f_t).backward()
    # d loss / d z = 1/2 (sigmoid(z) - 1) / N_s for source, 1/2 sigmoid(z) / N_t for target;
    # d z / d f = w.
    dz_s = [0.5 * (sigmoid(z) - 1.0) / 2 for z in Z_S]
    dz_t = [0.5 * sigmoid(z) / 3 for z in Z_T]
    w = torch.tensor([1.0, -1.0])
    assert torch.allclose(f_s.grad, -torch.tensor(dz_s)[:, None] * w)
    assert torch.allclose(f_t.grad, -torch.tensor(dz_t)[:, None] * w)
    assert disc.bias.grad.item() == pytest.approx(sum(dz_s) + sum(dz_t), rel=1e-6)


def test_dann_two_logit_softmax_hand_values():
    # Logits: (f0, f1 + 0.5); class 1 is source.
    disc = fixed_linear([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.5])
    loss_fn = DomainAdversarialLoss(disc, grl=GradientReverseLayer(), sigmoid=False)
    logits_s = [(1.0, 0.5), (0.0, 1.5)]
    logits_t = [(2.0, 1.5), (0.0, 0.5), (1.0, 2.5)]

    def cross_entropy(logits, label):
        return math.log(sum(math.exp(v) for v in logits)) - logits[label]

    ce_s = [cross_entropy(z, 1) for z in logits_s]
    ce_t = [cross_entropy(z, 0) for z in logits_t]
    expected = 0.5 * (sum(ce_s) / 2 + sum(ce_t) / 3)
    assert loss_fn(F_S, F_T).item() == pytest.approx(expected, rel=1e-6)
    # Argmax: source (0, 1) right once; target (0, 1, 1) right once.
    assert float(loss_fn.domain_discriminator_accuracy) == pytest.approx(0.5 * (50.0 + 100.0 / 3))


def test_dann_equal_batches_mean_is_plain_bce_over_both_domains():
    disc = DomainDiscriminator(8, 16)
    loss_fn = DomainAdversarialLoss(disc, grl=GradientReverseLayer())
    f_s, f_t = torch.randn(6, 8), torch.randn(6, 8) + 1.0
    logits = disc(torch.cat([f_s, f_t])).squeeze(1)
    labels = torch.cat([torch.ones(6), torch.zeros(6)])
    expected = F.binary_cross_entropy(torch.sigmoid(logits.double()), labels.double())
    assert torch.allclose(loss_fn(f_s, f_t).double(), expected, rtol=1e-5)


def test_dann_default_grl_warm_starts_from_zero_and_steps():
    torch.manual_seed(0)
    loss_fn = DomainAdversarialLoss(DomainDiscriminator(4, 8))
    f_s, f_t = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    loss_fn(f_s, f_t).backward()
    assert torch.count_nonzero(f_s.grad) == 0  # coeff(0) = lo = 0
    assert loss_fn.domain_discriminator[0].weight.grad.abs().sum() > 0
    assert int(loss_fn.grl.iter_num) == 1
    assert "grl.iter_num" in loss_fn.state_dict()


def test_dann_bad_weights_do_not_advance_the_schedule():
    loss_fn = DomainAdversarialLoss(DomainDiscriminator(2, 4))
    with pytest.raises(ValueError, match=r"w_t must have shape \(3,\)"):
        loss_fn(F_S, F_T, w_t=torch.ones(2))
    assert int(loss_fn.grl.iter_num) == 0


def test_dann_compiles_fullgraph_and_matches_eager():
    torch.manual_seed(0)
    eager = DomainAdversarialLoss(DomainDiscriminator(4, 8))  # default warm-start GRL, auto_step
    module = DomainAdversarialLoss(DomainDiscriminator(4, 8))
    module.load_state_dict(eager.state_dict())
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    for _ in range(3):
        f_s, f_t, w_s = torch.randn(5, 4), torch.randn(3, 4), torch.rand(5)
        x_eager, x_compiled = f_s.clone().requires_grad_(True), f_s.clone().requires_grad_(True)
        loss_eager, loss_compiled = eager(x_eager, f_t, w_s), compiled(x_compiled, f_t, w_s)
        loss_eager.backward()
        loss_compiled.backward()
        assert torch.allclose(loss_compiled, loss_eager, rtol=1e-6)
        assert torch.allclose(x_compiled.grad, x_eager.grad, rtol=1e-5, atol=1e-8)
        assert float(module.domain_discriminator_accuracy) == float(eager.domain_discriminator_accuracy)
    assert int(module.grl.iter_num) == int(eager.grl.iter_num) == 3


def test_dann_under_autocast_matches_float32():
    torch.manual_seed(0)
    loss_fn = DomainAdversarialLoss(DomainDiscriminator(16, 32), grl=GradientReverseLayer())
    f_s, f_t = torch.randn(8, 16), torch.randn(8, 16)
    reference = loss_fn(f_s, f_t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(f_s, f_t)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss) and abs(loss.item() - reference.item()) < 3e-2 * reference.item()


def test_domain_discriminator_layout():
    with_bn = DomainDiscriminator(10, 20)
    assert [type(m) for m in with_bn] == [
        nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear
    ]
    without_bn = DomainDiscriminator(10, 20, batch_norm=False, out_features=2)
    assert [type(m) for m in without_bn] == [
        nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear
    ]
    assert with_bn(torch.randn(3, 10)).shape == (3, 1)
    assert without_bn(torch.randn(3, 10)).shape == (3, 2)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: DomainAdversarialLoss(DomainDiscriminator(2, 4), reduction="avg"), ValueError,
         r"reduction must be one of \('none', 'mean', 'sum'\)"),
        (lambda: DomainAdversarialLoss(lambda x: x), TypeError,
         "domain_discriminator must be an nn.Module"),
        (lambda: sigmoid_dann()[0](F_S, F_T, w_s=torch.ones(3)), ValueError,
         r"w_s must have shape \(2,\)"),
        (lambda: sigmoid_dann()[0](F_S, F_T, w_t=torch.ones(3, dtype=torch.long)), TypeError,
         "w_t must have a floating dtype"),
        (lambda: sigmoid_dann()[0](F_S, torch.ones(3, 4)), ValueError, "share the feature shape"),
        (lambda: sigmoid_dann()[0](F_S, torch.ones(0, 2)), ValueError, "at least one sample"),
        (lambda: sigmoid_dann()[0](F_S.long(), F_T), TypeError, "f_s must be float16, bfloat16, float32 or float64"),
        (lambda: DomainAdversarialLoss(DomainDiscriminator(2, 4), sigmoid=False)(F_S, F_T),
         ValueError, r"sigmoid=False .* shape \(5, 2\), got \(5, 1\)"),
        (lambda: DomainAdversarialLoss(DomainDiscriminator(2, 4, out_features=2))(F_S, F_T),
         ValueError, r"sigmoid=True .* got \(5, 2\)"),
        (lambda: DomainDiscriminator(2, 4, out_features=3), ValueError, "out_features must be 1"),
        (lambda: DomainDiscriminator(0, 4), ValueError, "in_feature must be a positive int"),
    ],
)
def test_dann_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- worked example (docs)
def two_moons(n, angle_deg, generator, noise=0.1):
    """Two interleaved half circles, rotated by angle_deg about their centre (0.5, 0.25)."""
    labels = torch.arange(n) % 2
    t = torch.rand(n, generator=generator) * math.pi
    points = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    points = torch.where(labels[:, None] == 1, torch.tensor([1.0, 0.5]) - points, points)
    points = points + noise * torch.randn(n, 2, generator=generator)
    a = math.radians(angle_deg)
    rotation = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    centre = torch.tensor([0.5, 0.25])
    return (points - centre) @ rotation.T + centre, labels


def train_on_moons(adapt, steps=1000, batch=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x_s, y_s = two_moons(512, 0.0, generator)
    x_t, y_t = two_moons(512, 30.0, generator)  # target labels only for evaluation
    torch.manual_seed(seed)
    features = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
    head = nn.Linear(32, 2)
    dann = DomainAdversarialLoss(
        DomainDiscriminator(32, 32),
        grl=WarmStartGradientReverseLayer(alpha=10.0, max_iters=steps, auto_step=True),
    )
    params = [*features.parameters(), *head.parameters()]
    if adapt:
        params += [*dann.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    for _ in range(steps):
        i = torch.randint(0, 512, (batch,), generator=generator)
        j = torch.randint(0, 512, (batch,), generator=generator)
        f_s, f_t = features(x_s[i]), features(x_t[j])
        loss = F.cross_entropy(head(f_s), y_s[i])
        if adapt:
            loss = loss + dann(f_s, f_t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (head(features(x_t)).argmax(dim=1) == y_t).float().mean().item()


@pytest.fixture
def one_thread():
    # Tiny matrices: one thread is several times faster than many on a shared CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_dann_beats_source_only_on_rotated_two_moons(one_thread):
    source_only = train_on_moons(adapt=False)
    adapted = train_on_moons(adapt=True)
    assert adapted > 0.85
    assert adapted > source_only + 0.05, (source_only, adapted)


# ---------------------------------------------------------------- CUDA
@pytest.mark.gpu
def test_dann_and_warm_start_on_cuda_match_cpu():
    torch.manual_seed(0)
    loss_fn = DomainAdversarialLoss(
        DomainDiscriminator(8, 16), grl=WarmStartGradientReverseLayer(lo=0.5, auto_step=True)
    )
    f_s, f_t, w_s = torch.randn(6, 8), torch.randn(4, 8), torch.rand(6)
    results = []
    for device in ("cpu", "cuda"):
        loss_fn.grl.iter_num.zero_()
        module = loss_fn.to(device)
        fs = f_s.to(device).requires_grad_(True)
        loss = module(fs, f_t.to(device), w_s.to(device))
        loss.backward()
        results.append((loss.cpu(), fs.grad.cpu(), float(module.domain_discriminator_accuracy)))
        assert module.grl.iter_num.device.type == device and int(module.grl.iter_num) == 1
    (loss_cpu, grad_cpu, acc_cpu), (loss_gpu, grad_gpu, acc_gpu) = results
    assert torch.allclose(loss_cpu, loss_gpu, rtol=1e-4)
    assert torch.allclose(grad_cpu, grad_gpu, rtol=1e-4, atol=1e-6)
    assert acc_cpu == acc_gpu
