"""CDAN, MCC, MDD, AFN and BSP (docs/api_adaptation.md): each against a float64 computation written
here with loops and explicit formulas, their gradients, reductions, known cases and bad input."""
import math
import pathlib
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tltorch_ext.adaptation import (
    AdaptiveFeatureNorm,
    BatchSpectralPenalization,
    ConditionalDomainAdversarialLoss,
    DomainDiscriminator,
    GradientReverseLayer,
    MarginDisparityDiscrepancy,
    MinimumClassConfusionLoss,
    MultiLinearMap,
    RandomizedMultiLinearMap,
    StepwiseAdaptiveFeatureNorm,
)

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "api_adaptation.md"
D64 = torch.float64


def randn(*shape, seed=0, dtype=D64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def softmax_row(row):
    """softmax of a list of floats, in plain Python."""
    top = max(row)
    e = [math.exp(v - top) for v in row]
    return [v / sum(e) for v in e]


def central_difference(fn, x, eps=1e-6):
    """∂fn/∂x by central differences, entry by entry (float64)."""
    grad = torch.zeros_like(x)
    for index in range(x.numel()):
        step = torch.zeros_like(x).view(-1)
        step[index] = eps
        step = step.view_as(x)
        grad.view(-1)[index] = (fn(x + step) - fn(x - step)) / (2 * eps)
    return grad


# ---------------------------------------------------------------- multilinear maps
def test_multilinear_map_is_the_flattened_outer_product():
    f, g = randn(3, 4, seed=1), randn(3, 2, seed=2)
    h = MultiLinearMap()(f, g)
    assert h.shape == (3, 8)
    for i in range(3):
        for a in range(4):
            for c in range(2):
                assert h[i, a * 2 + c] == f[i, a] * g[i, c]


def test_randomized_map_formula_generator_and_state_dict():
    rmap = RandomizedMultiLinearMap(4, 3, output_dim=6, generator=torch.Generator().manual_seed(7))
    again = RandomizedMultiLinearMap(4, 3, output_dim=6, generator=torch.Generator().manual_seed(7))
    assert torch.equal(rmap.Rf, again.Rf) and torch.equal(rmap.Rg, again.Rg)
    assert rmap.Rf.shape == (6, 4) and rmap.Rg.shape == (6, 3)
    f, g = randn(2, 4, seed=1), randn(2, 3, seed=2)
    h = rmap(f, g)
    rf, rg = rmap.Rf.double(), rmap.Rg.double()
    for i in range(2):
        for k in range(6):
            projected_f = sum(rf[k, a] * f[i, a] for a in range(4))
            projected_g = sum(rg[k, c] * g[i, c] for c in range(3))
            assert h[i, k].item() == pytest.approx(
                (projected_f * projected_g / math.sqrt(6)).item(), rel=1e-12, abs=1e-12)
    # The matrices are buffers: saved in state_dict and restored, never trained.
    assert set(rmap.state_dict()) == {"Rf", "Rg"} and not list(rmap.parameters())
    other = RandomizedMultiLinearMap(4, 3, output_dim=6)
    other.load_state_dict(rmap.state_dict())
    assert torch.equal(other(f, g), h)


def test_randomized_map_inner_products_estimate_the_tensor_products_without_bias():
    d = 4096
    rmap = RandomizedMultiLinearMap(3, 2, output_dim=d, generator=torch.Generator().manual_seed(0))
    f, g = randn(40, 3, seed=3), randn(40, 2, seed=4)
    h = rmap(f, g)
    estimate = (h[:20] * h[20:]).sum(1)
    exact = (f[:20] * f[20:]).sum(1) * (g[:20] * g[20:]).sum(1)
    scale = f[:20].norm(dim=1) * f[20:].norm(dim=1) * g[:20].norm(dim=1) * g[20:].norm(dim=1)
    relative = ((estimate - exact) / scale).abs()
    assert relative.mean() < 0.05        # ~ 1/sqrt(d) = 0.016 per pair
    assert abs(((estimate - exact) / scale).mean()) < 0.02


# ---------------------------------------------------------------- CDAN
def cdan_reference(weight, bias, g_s, f_s, g_t, f_t, entropy_conditioning, reduction,
                   feature_map=None):
    """Loops over samples: p = softmax(g), h = f ⊗ p (or feature_map(f, p)), z = w·h + b,
    ℓ = softplus(−z) on the source (label 1), softplus(z) on the target, weights 1 + exp(−H)."""
    per_domain = []
    for g, f, is_source in ((g_s, f_s, True), (g_t, f_t, False)):
        losses, weights = [], []
        for i in range(g.shape[0]):
            p = softmax_row(g[i].tolist())
            if feature_map is None:
                h = [f[i, a].item() * p[c] for a in range(f.shape[1]) for c in range(len(p))]
            else:
                h = feature_map(f[i].tolist(), p)
            z = sum(w * v for w, v in zip(weight, h)) + bias
            losses.append(math.log1p(math.exp(-z if is_source else z)))
            entropy = -sum(q * math.log(q) for q in p)
            weights.append(1.0 + math.exp(-entropy) if entropy_conditioning else 1.0)
        mean_weight = sum(weights) / len(weights)
        per_domain.append([w / mean_weight * loss for w, loss in zip(weights, losses)])
    source, target = per_domain
    if reduction == "none":
        return [0.5 * v for v in source + target]
    if reduction == "sum":
        return 0.5 * (sum(source) + sum(target))
    return 0.5 * (sum(source) / len(source) + sum(target) / len(target))


def cdan_inputs(n_s=4, n_t=3, classes=3, features=2):
    return (randn(n_s, classes, seed=10), randn(n_s, features, seed=11),
            randn(n_t, classes, seed=12), randn(n_t, features, seed=13))


def linear_discriminator(in_features, seed=5):
    torch.manual_seed(seed)
    return nn.Linear(in_features, 1).double()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("entropy_conditioning", [False, True])
def test_cdan_matches_loop_reference(entropy_conditioning, reduction):
    g_s, f_s, g_t, f_t = cdan_inputs()
    disc = linear_discriminator(6)
    loss = ConditionalDomainAdversarialLoss(disc, entropy_conditioning=entropy_conditioning,
                                            reduction=reduction, grl=GradientReverseLayer())
    got = loss(g_s, f_s, g_t, f_t)
    expected = cdan_reference(disc.weight[0].tolist(), disc.bias.item(), g_s, f_s, g_t, f_t,
                              entropy_conditioning, reduction)
    assert torch.allclose(got, torch.tensor(expected, dtype=D64), rtol=1e-12, atol=1e-14)
    assert 0.0 <= float(loss.domain_discriminator_accuracy) <= 100.0


def test_cdan_randomized_matches_loop_reference():
    g_s, f_s, g_t, f_t = cdan_inputs()
    disc = linear_discriminator(8)
    loss = ConditionalDomainAdversarialLoss(disc, entropy_conditioning=True, randomized=True,
                                            num_classes=3, features_dim=2, randomized_dim=8,
                                            grl=GradientReverseLayer())
    rf, rg = loss.map.Rf.double().tolist(), loss.map.Rg.double().tolist()

    def randomized(f, p):
        return [sum(r * v for r, v in zip(rf[k], f)) * sum(r * v for r, v in zip(rg[k], p))
                / math.sqrt(8) for k in range(8)]

    expected = cdan_reference(disc.weight[0].tolist(), disc.bias.item(), g_s, f_s, g_t, f_t,
                              True, "mean", feature_map=randomized)
    assert loss(g_s, f_s, g_t, f_t).item() == pytest.approx(expected, rel=1e-12)
    assert {"map.Rf", "map.Rg"} <= set(loss.state_dict())


@pytest.mark.parametrize("randomized", [False, True])
def test_cdan_gradcheck_on_features(randomized):
    # nn.Identity instead of a GRL: gradcheck compares with finite differences, which a reversal
    # deliberately contradicts. The predictions are constants of the loss, so only f varies.
    g_s, f_s, g_t, f_t = cdan_inputs(n_s=3, n_t=2)
    loss = ConditionalDomainAdversarialLoss(
        linear_discriminator(5 if randomized else 6), entropy_conditioning=True,
        randomized=randomized, num_classes=3, features_dim=2, randomized_dim=5, grl=nn.Identity())
    if randomized:
        loss.map.double()
    assert torch.autograd.gradcheck(lambda a, b: loss(g_s, a, g_t, b),
                                    (f_s.requires_grad_(), f_t.requires_grad_()))


def test_cdan_reverses_the_feature_gradient_only():
    g_s, f_s, g_t, f_t = cdan_inputs()
    grads = {}
    for name, grl in (("plain", nn.Identity()), ("reversed", GradientReverseLayer())):
        disc = linear_discriminator(6)
        inputs = [t.clone().requires_grad_() for t in (g_s, f_s, g_t, f_t)]
        ConditionalDomainAdversarialLoss(disc, entropy_conditioning=True, grl=grl)(
            *inputs).backward()
        grads[name] = (inputs, disc.weight.grad)
    (plain_inputs, plain_w), (rev_inputs, rev_w) = grads["plain"], grads["reversed"]
    assert plain_inputs[1].grad.abs().sum() > 0
    for index in (1, 3):  # f_s, f_t
        assert torch.equal(rev_inputs[index].grad, -plain_inputs[index].grad)
    assert torch.equal(rev_w, plain_w)                     # the discriminator learns normally
    assert rev_inputs[0].grad is None and rev_inputs[2].grad is None   # p enters detached


def test_cdan_default_grl_warm_starts_and_bad_input_does_not_step_it():
    loss = ConditionalDomainAdversarialLoss(DomainDiscriminator(6, 8).double())
    g_s, f_s, g_t, f_t = cdan_inputs()
    f_s.requires_grad_()
    loss(g_s, f_s, g_t, f_t).backward()
    assert torch.equal(f_s.grad, torch.zeros_like(f_s))      # coeff(0) = lo = 0
    assert int(loss.grl.iter_num) == 1
    with pytest.raises(ValueError, match="features_dim = 2, the loss was built with"):
        ConditionalDomainAdversarialLoss(DomainDiscriminator(6, 8), features_dim=3)(
            g_s, f_s, g_t, f_t)
    with pytest.raises(ValueError, match="same number of samples"):
        loss(g_s[:2], f_s, g_t, f_t)
    assert int(loss.grl.iter_num) == 1


def test_cdan_half_precision_runs_and_matches_float32():
    g_s, f_s, g_t, f_t = (t.float() for t in cdan_inputs())
    disc = nn.Linear(6, 1)
    full = ConditionalDomainAdversarialLoss(disc, entropy_conditioning=True,
                                            grl=GradientReverseLayer())(g_s, f_s, g_t, f_t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = ConditionalDomainAdversarialLoss(disc, entropy_conditioning=True,
                                                grl=GradientReverseLayer())(
            g_s.bfloat16(), f_s.bfloat16(), g_t.bfloat16(), f_t.bfloat16())
    assert half.dtype == torch.float32
    assert torch.allclose(half, full, rtol=2e-2)


# ---------------------------------------------------------------- MCC
def mcc_reference(logits, temperature, weight_logits=None):
    """Loops: Ŷ = softmax(z/T), W_i = B(1 + exp(−H_i))/Σ, C = ŶᵀWŶ, rows normalised, off-diagonal
    mass over C. ``weight_logits`` computes the weights from other logits (held constant)."""
    batch, classes = logits.shape
    y = torch.stack([torch.stack([torch.exp(logits[i, c] / temperature) for c in range(classes)])
                     for i in range(batch)])
    y = y / y.sum(1, keepdim=True)
    source = logits if weight_logits is None else weight_logits
    certainty = []
    for i in range(batch):
        p = softmax_row([v / temperature for v in source[i].tolist()])
        certainty.append(1.0 + math.exp(sum(q * math.log(q) for q in p if q > 0)))
    w = [batch * c / sum(certainty) for c in certainty]
    total = 0.0
    for j in range(classes):
        row = [sum(w[i] * y[i, j] * y[i, k] for i in range(batch)) for k in range(classes)]
        row_sum = sum(row)
        if row_sum == 0:
            continue
        total = total + sum(row[k] / row_sum for k in range(classes) if k != j)
    return total / classes


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_mcc_matches_loop_reference(temperature):
    logits = randn(5, 3, seed=20) * 2
    got = MinimumClassConfusionLoss(temperature)(logits)
    assert got.dtype == D64 and got.shape == ()
    assert got.item() == pytest.approx(float(mcc_reference(logits, temperature)), rel=1e-12)


def test_mcc_known_cases():
    mcc = MinimumClassConfusionLoss()
    # One confident, one-hot prediction per class: no confusion at all.
    assert mcc(60.0 * torch.eye(4, dtype=D64)).item() == pytest.approx(0.0, abs=1e-9)
    # Uniform predictions: every row of C̃ is uniform, L = 1 − 1/C.
    assert mcc(torch.zeros(5, 4, dtype=D64)).item() == pytest.approx(0.75, rel=1e-14)
    # A class that gets exactly zero probability adds no confusion (and no 0/0).
    logits = randn(3, 3, seed=21)
    logits[:, 2] = -1e4
    got = mcc(logits)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(float(mcc_reference(logits, 2.5)), rel=1e-12)


def test_mcc_gradient_holds_the_entropy_weights_constant():
    # torch.autograd.gradcheck does not apply: the weights are stop-gradient by design, so the
    # finite differences of the loss itself differ. The reference with the weights frozen at x0 is
    # differentiated by central differences instead.
    x0 = randn(4, 3, seed=22)
    x = x0.clone().requires_grad_()
    MinimumClassConfusionLoss(2.0)(x).backward()
    numeric = central_difference(lambda z: mcc_reference(z, 2.0, weight_logits=x0), x0)
    assert torch.allclose(x.grad, numeric, rtol=1e-6, atol=1e-9)


def test_mcc_half_precision_is_computed_in_float32():
    logits = randn(6, 4, seed=23, dtype=torch.float32)
    got = MinimumClassConfusionLoss()(logits.bfloat16())
    assert got.dtype == torch.float32
    expected = MinimumClassConfusionLoss()(logits.bfloat16().float())
    assert torch.allclose(got, expected, rtol=1e-6)


# ---------------------------------------------------------------- MDD
def mdd_reference(y_s, y_s_adv, y_t, y_t_adv, margin, reduction):
    """Plain Python: ŷ = argmax, −γ·(−log p_adv[ŷ]) on the source, log(1 − p_adv[ŷ]) on the
    target (1 − p formed as the sum of the other probabilities)."""
    source, target = [], []
    for main, adv, out, is_source in ((y_s, y_s_adv, source, True), (y_t, y_t_adv, target, False)):
        for i in range(main.shape[0]):
            row = main[i].tolist()
            predicted = row.index(max(row))
            p = softmax_row(adv[i].tolist())
            if is_source:
                out.append(-margin * -math.log(p[predicted]))
            else:
                out.append(max(math.log(sum(q for c, q in enumerate(p) if c != predicted)),
                               math.log(1e-15)))
    if reduction == "none":
        return source + target
    if reduction == "sum":
        return sum(source) + sum(target)
    return sum(source) / len(source) + sum(target) / len(target)


def mdd_inputs():
    return randn(4, 3, seed=30), randn(4, 3, seed=31), randn(5, 3, seed=32), randn(5, 3, seed=33)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("margin", [2.0, 4.0])
def test_mdd_matches_loop_reference(margin, reduction):
    inputs = mdd_inputs()
    got = MarginDisparityDiscrepancy(margin, reduction=reduction)(*inputs)
    expected = torch.tensor(mdd_reference(*inputs, margin, reduction), dtype=D64)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-14)
    assert (got <= 0).all()


def test_mdd_gradcheck_and_no_gradient_to_the_main_head():
    inputs = [t.requires_grad_() for t in mdd_inputs()]
    mdd = MarginDisparityDiscrepancy(3.0)
    assert torch.autograd.gradcheck(mdd, inputs)
    mdd(*inputs).backward()
    assert inputs[0].grad is None and inputs[2].grad is None    # ŷ = argmax, a constant
    assert inputs[1].grad.abs().sum() > 0 and inputs[3].grad.abs().sum() > 0


def test_mdd_log_one_minus_p_is_exact_and_floored():
    mdd = MarginDisparityDiscrepancy(reduction="none")
    y_s = torch.tensor([[1.0, 0.0, 0.0]])
    # 1 − p = 2e^-20 / (1 + 2e^-20): rounds to 0 in float32 if formed as 1 − p.
    y_t = torch.tensor([[20.0, 0.0, 0.0]])
    got = mdd(y_s, y_s, y_t, y_t)[1]
    expected = math.log(2.0) - 20.0 - math.log1p(2.0 * math.exp(-20.0))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # Full agreement on the target: floored at log(1e-15), with no gradient below the floor.
    y_t_adv = torch.tensor([[100.0, 0.0, 0.0]], requires_grad=True)
    got = mdd(y_s, y_s, y_t, y_t_adv)[1]
    assert got.item() == pytest.approx(math.log(1e-15))
    got.backward()
    assert torch.equal(y_t_adv.grad, torch.zeros_like(y_t_adv))


def test_mdd_half_precision_is_computed_in_float32():
    inputs = [t.float() for t in mdd_inputs()]
    got = MarginDisparityDiscrepancy()(*(t.bfloat16() for t in inputs))
    expected = MarginDisparityDiscrepancy()(*(t.bfloat16().float() for t in inputs))
    assert got.dtype == torch.float32 and torch.allclose(got, expected, rtol=1e-6)


# ---------------------------------------------------------------- AFN
def norms_by_loop(f):
    return [math.sqrt(sum(v * v for v in row)) for row in f.flatten(1).tolist()]


@pytest.mark.parametrize("reduction, expected", [("mean", 0.25), ("sum", 1.0),
                                                 ("none", [0.25] * 4)])
def test_stepwise_afn_value_is_delta_squared(reduction, expected):
    got = StepwiseAdaptiveFeatureNorm(0.5, reduction=reduction)(randn(4, 3, seed=40))
    assert torch.allclose(got, torch.tensor(expected, dtype=D64), rtol=1e-14)


def test_stepwise_afn_gradient_and_step_lengthen_every_feature():
    f0 = randn(4, 2, 3, seed=41)
    f = f0.clone().requires_grad_()
    delta = 1.5
    StepwiseAdaptiveFeatureNorm(delta)(f).backward()
    norms = norms_by_loop(f0)
    for i in range(4):  # ∂/∂f_i mean_j (||f_j|| − ||f_j||.detach() − Δ)² = −2Δ f_i / (N ||f_i||)
        assert torch.allclose(f.grad[i], -2 * delta * f0[i] / (4 * norms[i]), rtol=1e-12)
    stepped = norms_by_loop(f0 - 0.1 * f.grad)
    for before, after in zip(norms, stepped):
        assert after == pytest.approx(before + 0.1 * 2 * delta / 4, rel=1e-12)


def test_afn_zero_feature_gets_zero_gradient():
    f = torch.zeros(2, 3, dtype=D64, requires_grad=True)
    StepwiseAdaptiveFeatureNorm()(f).backward()
    assert torch.equal(f.grad, torch.zeros_like(f))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_hard_afn_matches_loop_reference(reduction):
    f = randn(5, 4, seed=42)
    per_sample = [(n - 2.0) ** 2 for n in norms_by_loop(f)]
    expected = {"none": per_sample, "sum": sum(per_sample),
                "mean": sum(per_sample) / 5}[reduction]
    got = AdaptiveFeatureNorm(2.0, reduction=reduction)(f)
    assert torch.allclose(got, torch.tensor(expected, dtype=D64), rtol=1e-12)


def test_hard_afn_gradcheck_and_pull_towards_the_radius():
    f = randn(4, 3, seed=43).requires_grad_()
    afn = AdaptiveFeatureNorm(1.7)
    assert torch.autograd.gradcheck(afn, (f,))
    afn(f).backward()
    before = norms_by_loop(f.detach())
    after = norms_by_loop(f.detach() - 0.05 * f.grad)
    for b, a in zip(before, after):
        assert abs(a - 1.7) < abs(b - 1.7)


def test_afn_flattens_trailing_dimensions_and_half_precision():
    f = randn(3, 2, 4, seed=44, dtype=torch.float32)
    for afn in (AdaptiveFeatureNorm(2.0), StepwiseAdaptiveFeatureNorm()):
        assert torch.equal(afn(f), afn(f.flatten(1)))
        got = afn(f.bfloat16())
        assert got.dtype == torch.float32
        assert torch.allclose(got, afn(f.bfloat16().float()), rtol=1e-6)


# ---------------------------------------------------------------- BSP
def top_k_sigma_squared(f, k):
    """The k largest eigenvalues of the smaller Gram matrix, a different route than the SVD."""
    gram = f @ f.T if f.shape[0] <= f.shape[1] else f.T @ f
    return torch.linalg.eigvalsh(gram.double()).flip(0)[:k].sum()


@pytest.mark.parametrize("k", [1, 2])
def test_bsp_is_the_sum_of_the_top_k_squared_singular_values(k):
    f_s, f_t = randn(6, 4, seed=50), randn(3, 4, seed=51)
    got = BatchSpectralPenalization(k)(f_s, f_t)
    expected = top_k_sigma_squared(f_s, k) + top_k_sigma_squared(f_t, k)
    assert got.dtype == D64 and got.shape == ()
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    svd = sum(torch.linalg.svdvals(f)[:k].square().sum() for f in (f_s, f_t))
    assert got.item() == pytest.approx(svd.item(), rel=1e-12)


def test_bsp_with_every_singular_value_is_the_squared_frobenius_norm():
    f_s, f_t = randn(3, 5, seed=52), randn(3, 5, seed=53)
    got = BatchSpectralPenalization(3)(f_s, f_t)
    frobenius = sum(v * v for v in f_s.flatten().tolist() + f_t.flatten().tolist())
    assert got.item() == pytest.approx(frobenius, rel=1e-12)


def test_bsp_gradcheck_and_gradient_formula():
    f_s, f_t = randn(4, 3, seed=54).requires_grad_(), randn(5, 3, seed=55).requires_grad_()
    bsp = BatchSpectralPenalization(1)
    assert torch.autograd.gradcheck(bsp, (f_s, f_t))
    bsp(f_s, f_t).backward()
    u, s, vh = torch.linalg.svd(f_s.detach(), full_matrices=False)
    assert torch.allclose(f_s.grad, 2 * s[0] * torch.outer(u[:, 0], vh[0]), rtol=1e-10)


def test_bsp_half_precision_is_computed_in_float32():
    f_s, f_t = randn(4, 6, seed=56, dtype=torch.float32), randn(4, 6, seed=57, dtype=torch.float32)
    got = BatchSpectralPenalization(2)(f_s.half(), f_t.half())
    assert got.dtype == torch.float32
    expected = BatchSpectralPenalization(2)(f_s.half().float(), f_t.half().float())
    assert torch.allclose(got, expected, rtol=1e-5)


# ---------------------------------------------------------------- bad input beyond the table
META = torch.empty(2, 3, device="meta")


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: MultiLinearMap()(torch.ones(2, 3), META), ValueError, "g is on meta"),
        (lambda: MultiLinearMap()(torch.ones(2, 3, 1), torch.ones(2, 3)), ValueError,
         "f must have 2 dimensions"),
        (lambda: RandomizedMultiLinearMap(3, 3, 4)(META, META), ValueError, "map's matrices"),
        (lambda: RandomizedMultiLinearMap(3, 3, generator=0), TypeError, "generator"),
        (lambda: ConditionalDomainAdversarialLoss(nn.Linear(9, 1), randomized_dim=0),
         ValueError, "randomized_dim"),
        (lambda: ConditionalDomainAdversarialLoss(nn.Linear(9, 1))(
            torch.ones(2, 3), torch.ones(2, 3), META, META), ValueError, "f_t is on meta"),
        (lambda: ConditionalDomainAdversarialLoss(nn.Linear(9, 1), num_classes=4)(
            *[torch.ones(2, 3)] * 4), ValueError, "num_classes = 3"),
        (lambda: MinimumClassConfusionLoss("2")(torch.ones(2, 3)), TypeError, "temperature"),
        (lambda: MinimumClassConfusionLoss()(torch.ones(3)), ValueError, "logits must have 2"),
        (lambda: MarginDisparityDiscrepancy()(*[torch.ones(2, 1)] * 4), ValueError,
         "at least 2 classes"),
        (lambda: MarginDisparityDiscrepancy()(torch.ones(2, 3), torch.ones(2, 3),
                                              torch.ones(2, 4), torch.ones(2, 4)),
         ValueError, "same number of classes"),
        (lambda: MarginDisparityDiscrepancy()(torch.ones(2, 3), torch.ones(2, 3), META, META),
         ValueError, "y_t is on meta"),
        (lambda: StepwiseAdaptiveFeatureNorm(reduction="avg"), ValueError, "reduction"),
        (lambda: AdaptiveFeatureNorm(1.0)(torch.tensor(1.0)), ValueError, "f must hold"),
        (lambda: BatchSpectralPenalization(1.0), TypeError, "k must be an int"),
        (lambda: BatchSpectralPenalization()(torch.ones(2, 3), META), ValueError, "device"),
        (lambda: BatchSpectralPenalization()(torch.ones(2, 3, 1), torch.ones(2, 3)), ValueError,
         "f_s must have 2 dimensions"),
    ],
)
def test_adaptation_losses_bad_input(call, error, match):
    with pytest.raises(error, match=match) as raised:
        call()
    assert type(raised.value) is error


# ---------------------------------------------------------------- docs
def test_docs_examples_of_the_adaptation_losses_run():
    """The python blocks of the CDAN … BSP sections of docs/api_adaptation.md run as written (the
    page's other blocks are fragments that use the reader's own model and data)."""
    text = DOCS.read_text()
    start, end = text.index("### Conditional adversarial training (CDAN)"), text.index(
        "### Few-shot")
    blocks = re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)
    assert len(blocks) == 5
    for block in blocks:
        torch.manual_seed(0)
        namespace = {}
        exec(compile(block, str(DOCS), "exec"), namespace)
