"""Transferability scores: LogME against a slow per-class float64 oracle and a direct maximisation
of the evidence, LEEP / NCE / H-score against hand-computed and closed-form values, dtypes,
rankings, the docs page's examples and bad input."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from sklearn.covariance import ledoit_wolf

import tltorch_ext as tl
from tltorch_ext.ranking import h_score, leep, log_me, nce


def separated(n=120, classes=3, dim=6, spread=3.0, seed=0):
    """(features, labels): class means spread apart along the first coordinates, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    labels[:classes] = torch.arange(classes)  # every class present
    means = torch.zeros(classes, dim)
    means[:, :classes] = spread * torch.eye(classes)
    return means[labels] + torch.randn(n, dim, generator=g, dtype=torch.float64).float(), labels


# ---------------------------------------------------------------- LogME
def evidence(f, y, alpha, beta):
    """Log evidence of y ~ N(F w, 1/beta), w ~ N(0, I/alpha) with explicit D x D matrices."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    return (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
            - beta / 2 * np.sum((y - f @ m) ** 2) - alpha / 2 * m @ m
            - np.linalg.slogdet(a)[1] / 2), m


def log_me_oracle(features, labels, tol=1e-5, max_iter=100):
    """One class at a time, with the eigenvalues of F^T F and A^-1 by a solve (not the SVD)."""
    f = features.double().numpy()
    n = f.shape[0]
    sigma = np.linalg.eigvalsh(f.T @ f)
    scores = []
    for c in np.unique(labels.numpy()):
        y = (labels.numpy() == c).astype(np.float64)
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            _, m = evidence(f, y, alpha, beta)
            gamma = np.sum(beta * sigma / (alpha + beta * sigma))
            new_alpha = gamma / (m @ m)
            new_beta = (n - gamma) / np.sum((y - f @ m) ** 2)
            converged = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
            alpha, beta = new_alpha, new_beta
            if converged:
                break
        scores.append(evidence(f, y, alpha, beta)[0] / n)
    return float(np.mean(scores))


def log_me_maximised(features, labels):
    """The mean over classes of max_{alpha, beta} evidence / N by Nelder-Mead on (log alpha,
    log beta): no fixed-point iteration at all."""
    f = features.double().numpy()
    scores = []
    for c in np.unique(labels.numpy()):
        y = (labels.numpy() == c).astype(np.float64)
        result = minimize(lambda t: -evidence(f, y, math.exp(t[0]), math.exp(t[1]))[0],
                          np.zeros(2), method="Nelder-Mead",
                          options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000})
        scores.append(-result.fun / f.shape[0])
    return float(np.mean(scores))


@pytest.mark.parametrize("n,dim,classes", [(60, 5, 3), (40, 12, 4), (30, 3, 2)])
@pytest.mark.parametrize("max_iter", [1, 3, 100])
def test_log_me_matches_per_class_oracle(n, dim, classes, max_iter):
    features, labels = separated(n, classes, dim, spread=1.5, seed=n + dim)
    got = log_me(features, labels, max_iter=max_iter)
    assert got.dtype == torch.float64 and got.shape == ()
    assert math.isclose(float(got), log_me_oracle(features, labels, max_iter=max_iter),
                        rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_log_me_is_the_maximised_evidence(seed):
    features, labels = separated(50, 3, 4, spread=1.0, seed=seed)
    got = float(log_me(features, labels, tol=1e-10, max_iter=1000))
    assert math.isclose(got, log_me_maximised(features, labels), rel_tol=1e-7, abs_tol=1e-9)


def test_log_me_labels_are_any_integers_and_order_free():
    features, labels = separated(40, 3, 4, seed=3)
    relabelled = torch.tensor([7, -2, 100])[labels].to(torch.int32)
    perm = torch.randperm(40)
    expected = log_me(features, labels)
    assert torch.allclose(log_me(features, relabelled), expected, rtol=1e-12, atol=0)
    assert torch.allclose(log_me(features[perm], labels[perm]), expected, rtol=1e-10, atol=0)


def test_log_me_more_features_than_samples_is_finite():
    features, labels = separated(10, 2, 30, seed=4)
    assert torch.isfinite(log_me(features, labels))


@pytest.mark.parametrize("seed", range(4))
def test_separated_features_rank_above_random_ones(seed):
    features, labels = separated(150, 4, 8, spread=3.0, seed=seed)
    noise = torch.randn(150, 8, generator=torch.Generator().manual_seed(100 + seed))
    assert log_me(features, labels) > log_me(noise, labels)
    assert h_score(features, labels) > h_score(noise, labels)
    assert h_score(features, labels, shrinkage=True) > h_score(noise, labels, shrinkage=True)


@pytest.mark.parametrize("score", [log_me, h_score, lambda f, y: h_score(f, y, shrinkage=True)])
def test_low_precision_features_are_scored_in_float64(score):
    features, labels = separated(80, 3, 5, seed=5)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = features.to(dtype)
        got = score(x, labels)
        assert got.dtype == torch.float64
        # The same values given in float64: float64-accurate, not float32-accurate.
        assert torch.allclose(got, score(x.double(), labels), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- LEEP
def test_leep_hand_computed():
    theta = torch.tensor([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    # P(y, z) * 4 = [[1.4, 0.6], [0.4, 1.6]], P(z) * 4 = [1.8, 2.2]
    p0 = [7 / 9, 3 / 11]  # P(y = 0 | z)
    p1 = [2 / 9, 8 / 11]  # P(y = 1 | z)
    expected = (math.log(0.8 * p0[0] + 0.2 * p0[1]) + math.log(0.6 * p0[0] + 0.4 * p0[1])
                + math.log(0.3 * p1[0] + 0.7 * p1[1]) + math.log(0.1 * p1[0] + 0.9 * p1[1])) / 4
    got = leep(theta, labels)
    assert got.dtype == torch.float64
    assert math.isclose(float(got), expected, rel_tol=1e-13)
    # float32 entries are float32 roundings of the decimals above.
    assert math.isclose(float(leep(theta.float(), labels)), expected, rel_tol=1e-6)


def test_leep_of_a_one_to_one_source_is_zero():
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 3])
    source = torch.tensor([2, 0, 4, 1])[labels]  # target class -> its own source class
    theta = F.one_hot(source, 6).float()  # source classes 3 and 5 never predicted
    assert float(leep(theta, labels)) == 0.0


def test_leep_of_one_hot_outputs_is_nce():
    g = torch.Generator().manual_seed(6)
    source = torch.randint(0, 5, (90,), generator=g)
    labels = torch.randint(0, 3, (90,), generator=g)
    theta = F.one_hot(source, 5).double()
    assert torch.allclose(leep(theta, labels), nce(source, labels), rtol=1e-12, atol=1e-15)


def test_leep_is_at_most_zero_and_ranks_an_informative_source_higher():
    features, labels = separated(200, 3, 3, spread=2.0, seed=7)
    informative = torch.softmax(3 * features.double(), 1)
    uninformative = torch.softmax(torch.randn(200, 3, dtype=torch.float64), 1)
    assert leep(uninformative, labels) < leep(informative, labels) <= 0
    # float32 and float16 probabilities: float64 arithmetic on the values given.
    for dtype in (torch.float32, torch.float16):
        p = informative.to(dtype)
        assert torch.allclose(leep(p, labels), leep(p.double(), labels), rtol=1e-12, atol=0)


# ---------------------------------------------------------------- NCE
def test_nce_hand_computed():
    source, target = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 1])
    # P(y | z = 0) = (2/3, 1/3), P(y = 1 | z = 1) = 1
    expected = 2 / 4 * math.log(2 / 3) + 1 / 4 * math.log(1 / 3)
    assert math.isclose(float(nce(source, target)), expected, rel_tol=1e-14)


def test_nce_of_a_deterministic_mapping_is_zero():
    source = torch.tensor([0, 1, 2, 3, 4, 5, 0, 3])
    target = torch.tensor([1, 1, 0, 0, 2, 2])[source]  # many-to-one: z determines y
    assert float(nce(source, target)) == 0.0


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_nce_of_independent_balanced_labels_is_minus_log_c(classes):
    # Every (z, y) pair exactly twice: P(y | z) = 1 / C for every z.
    z, y = torch.meshgrid(torch.arange(4), torch.arange(classes), indexing="ij")
    source, target = z.flatten().repeat(2), y.flatten().repeat(2)
    assert math.isclose(float(nce(source, target)), -math.log(classes), rel_tol=1e-14)


def test_nce_does_not_depend_on_label_values():
    g = torch.Generator().manual_seed(8)
    source = torch.randint(0, 4, (50,), generator=g)
    target = torch.randint(0, 3, (50,), generator=g)
    expected = nce(source, target)
    assert -math.log(3) <= float(expected) <= 0
    assert torch.allclose(nce(source * 10 - 7, torch.tensor([3, -1, 9])[target].to(torch.int16)),
                          expected, rtol=1e-14, atol=0)


# ---------------------------------------------------------------- H-score
def h_score_oracle(features, labels):
    f, y = features.double().numpy(), labels.numpy()
    cov_f = np.cov(f, rowvar=False, bias=True)
    means = {c: f[y == c].mean(0) for c in np.unique(y)}
    g = np.stack([means[c] for c in y])  # E[f | y] per sample
    cov_g = np.cov(g, rowvar=False, bias=True)
    return float(np.trace(np.linalg.pinv(cov_f, hermitian=True) @ cov_g))


def h_score_shrunk_oracle(features, labels):
    f, y = features.double().numpy(), labels.numpy()
    shrunk, rho = ledoit_wolf(f)  # scikit-learn's Ledoit-Wolf estimate (centres f)
    means = {c: f[y == c].mean(0) for c in np.unique(y)}
    cov_g = np.cov(np.stack([means[c] for c in y]), rowvar=False, bias=True)
    return float(np.trace(np.linalg.pinv(shrunk, hermitian=True) @ ((1 - rho) * cov_g))), rho


@pytest.mark.parametrize("n,dim,classes", [(80, 5, 3), (30, 10, 4), (12, 20, 3)])
def test_h_score_matches_direct_computation(n, dim, classes):
    features, labels = separated(n, classes, dim, seed=n)
    got = h_score(features, labels)
    assert got.dtype == torch.float64
    assert math.isclose(float(got), h_score_oracle(features, labels), rel_tol=1e-8)


@pytest.mark.parametrize("n,dim,classes", [(80, 5, 3), (30, 10, 4), (12, 20, 3)])
def test_shrinkage_h_score_matches_scikit_learn_ledoit_wolf(n, dim, classes):
    features, labels = separated(n, classes, dim, seed=n + 1)
    expected, rho = h_score_shrunk_oracle(features, labels)
    assert 0 < rho < 1
    assert math.isclose(float(h_score(features, labels, shrinkage=True)), expected, rel_tol=1e-9)


def test_h_score_in_one_dimension_is_the_between_class_variance_ratio():
    features = torch.tensor([[0.0], [2.0], [4.0], [10.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # mean 4; variance (16 + 4 + 0 + 36) / 4 = 14; class means 1, 7: (9 + 9 + 9 + 9) / 4 = 9
    assert math.isclose(float(h_score(features, labels)), 9 / 14, rel_tol=1e-14)
    # One dimension: S = nu I already, no shrinkage.
    assert math.isclose(float(h_score(features, labels, shrinkage=True)), 9 / 14, rel_tol=1e-14)


def test_h_score_is_affine_invariant():
    features, labels = separated(60, 3, 4, seed=9)
    a = torch.randn(4, 4, generator=torch.Generator().manual_seed(9)) + 3 * torch.eye(4)
    shift = torch.tensor([1.0, -5.0, 2.0, 0.5], dtype=torch.float64)
    moved = features.double() @ a.double() + shift
    assert torch.allclose(h_score(moved, labels), h_score(features, labels), rtol=1e-9, atol=0)


def test_constant_features_score_zero():
    labels = torch.tensor([0, 1, 0, 1])
    assert float(h_score(torch.ones(4, 3), labels)) == 0.0
    assert float(h_score(torch.ones(4, 3), labels, shrinkage=True)) == 0.0


# ---------------------------------------------------------------- exports and docs
def test_exported_from_the_package():
    assert tl.ranking.__all__ == ["log_me", "leep", "nce", "h_score"]
    for name in tl.ranking.__all__:
        assert getattr(tl, name) is getattr(tl.ranking, name) and name in tl.__all__


def test_docs_examples_run():
    text = (Path(__file__).parents[1] / "docs" / "api_ranking.md").read_text()
    blocks = text.split("```python\n")[1:]
    assert blocks
    for block in blocks:
        exec(compile(block.split("```")[0], "api_ranking.md", "exec"), {})


# ---------------------------------------------------------------- bad input
X = torch.randn(4, 3)
Y = torch.tensor([0, 1, 0, 1])
P = torch.full((4, 2), 0.5)
NAN = torch.tensor([[0.0, 1.0], [math.nan, 1.0], [0.0, 1.0], [0.0, 1.0]])
INF = torch.tensor([[0.0, 1.0], [math.inf, 1.0], [0.0, 1.0], [0.0, 1.0]])

FEATURE_SCORES = [log_me, h_score]
BAD_FEATURES = [
    ([[1.0, 2.0]], Y, TypeError, "features must be a torch.Tensor"),
    (X.long(), Y, TypeError, "features must be float16"),
    (X, Y.float(), TypeError, "labels must have an integer dtype"),
    (X, Y.bool(), TypeError, "labels must have an integer dtype"),
    (X, [0, 1, 0, 1], TypeError, "labels must be a torch.Tensor"),
    (X[0], Y, ValueError, "features must have 2 dimensions"),
    (X, Y[:, None], ValueError, "labels must have 1 dimensions"),
    (X[:1], Y[:1], ValueError, r"features must hold at least two samples \(N >= 2\)"),
    (X[:, :0], Y, ValueError, r"features must have at least one feature \(D >= 1\)"),
    (X, Y[:3], ValueError, r"labels must have shape \(4,\), one label per row of features"),
    (X, torch.zeros(4, dtype=torch.long), ValueError, "labels must hold at least 2 distinct"),
    (NAN, Y, ValueError, "features must be finite"),
    (INF, Y, ValueError, "features must be finite"),
    (X, Y.to("meta"), ValueError, "labels is on meta but features is on cpu"),
]


@pytest.mark.parametrize("score", FEATURE_SCORES)
@pytest.mark.parametrize("features,labels,error,message", BAD_FEATURES)
def test_feature_scores_refuse_bad_input(score, features, labels, error, message):
    with pytest.raises(error, match=message) as raised:
        score(features, labels)
    assert type(raised.value) is error


@pytest.mark.parametrize("kwargs,error,message", [
    ({"tol": 0.0}, ValueError, "tol must be a finite number > 0"),
    ({"tol": math.nan}, ValueError, "tol"),
    ({"tol": "small"}, TypeError, "tol must be a real number"),
    ({"max_iter": 0}, ValueError, "max_iter must be a positive int"),
    ({"max_iter": 2.0}, TypeError, "max_iter must be an int"),
])
def test_log_me_refuses_bad_options(kwargs, error, message):
    with pytest.raises(error, match=message):
        log_me(X, Y, **kwargs)


def test_h_score_shrinkage_must_be_a_bool():
    with pytest.raises(TypeError, match="shrinkage must be a bool"):
        h_score(X, Y, shrinkage=1)


@pytest.mark.parametrize("probabilities,labels,error,message", [
    (P.numpy(), Y, TypeError, "probabilities must be a torch.Tensor"),
    (torch.ones(4, 1, dtype=torch.long), Y, TypeError, "probabilities must be float16"),
    (P, Y.double(), TypeError, "labels must have an integer dtype"),
    (P[0], Y, ValueError, "probabilities must have 2 dimensions"),
    (P[:1], Y[:1], ValueError, r"probabilities must hold at least two samples"),
    (P[:, :0], Y, ValueError, "probabilities must have at least one source class"),
    (P, Y[:2], ValueError, r"labels must have shape \(4,\), one label per row of probabilities"),
    (P, torch.ones(4, dtype=torch.long), ValueError, "labels must hold at least 2 distinct"),
    (NAN, Y, ValueError, "probabilities must be finite"),
    (INF, Y, ValueError, "probabilities must be finite"),
    (torch.tensor([[1.5, -0.5]] * 4), Y, ValueError, r"probabilities must lie in \[0, 1\]"),
    (torch.full((4, 2), 0.4), Y, ValueError, "probabilities rows must sum to 1"),
    (P, Y.to("meta"), ValueError, "labels is on meta but probabilities is on cpu"),
])
def test_leep_refuses_bad_input(probabilities, labels, error, message):
    with pytest.raises(error, match=message) as raised:
        leep(probabilities, labels)
    assert type(raised.value) is error


def test_leep_row_sum_tolerance_follows_the_dtype():
    off = torch.tensor([[0.5, 0.502]] * 2)  # 2e-3 off: within bfloat16's, not float32's
    labels = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="rows must sum to 1"):
        leep(off, labels)
    assert torch.isfinite(leep(off.bfloat16(), labels))


@pytest.mark.parametrize("source,target,error,message", [
    (Y.tolist(), Y, TypeError, "source_labels must be a torch.Tensor"),
    (Y.float(), Y, TypeError, "source_labels must have an integer dtype"),
    (Y, Y.float(), TypeError, "target_labels must have an integer dtype"),
    (Y[None], Y, ValueError, "source_labels must have 1 dimensions"),
    (Y, Y[None], ValueError, "target_labels must have 1 dimensions"),
    (Y[:1], Y[:1], ValueError, r"source_labels must hold at least two samples"),
    (Y, Y[:3], ValueError, r"target_labels must have shape \(4,\), one label per row of source"),
    (Y, torch.zeros(4, dtype=torch.long), ValueError, "target_labels must hold at least 2"),
    (Y, Y.to("meta"), ValueError, "target_labels is on meta but source_labels is on cpu"),
])
def test_nce_refuses_bad_input(source, target, error, message):
    with pytest.raises(error, match=message) as raised:
        nce(source, target)
    assert type(raised.value) is error


def test_nce_accepts_a_single_source_class():
    # Z constant: NCE = -H(Y), here of a balanced binary Y.
    assert math.isclose(float(nce(torch.zeros(4, dtype=torch.long), Y)), -math.log(2),
                        rel_tol=1e-14)
