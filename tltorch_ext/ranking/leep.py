"""Scores from the empirical joint of source-model outputs and target labels: LEEP (Nguyen et al.,
"LEEP: A New Measure to Evaluate Transferability of Learned Representations", ICML 2020) and NCE
(Tran et al., "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019)."""
import torch

from ._checks import class_indices, probabilities64

__all__ = ["leep", "nce"]


@torch.no_grad()
def leep(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""LEEP score of a source classifier for the target task ``labels``: higher is better, <= 0.

    theta(x_i) = ``probabilities[i]`` is the source model's softmax over its C_s classes z on
    target sample i. The empirical joint of target label y and source label z, the source
    marginal and the conditional are

        P(y, z) = (1/N) sum_{i: y_i = y} theta(x_i)_z,   P(z) = sum_y P(y, z),
        P(y | z) = P(y, z) / P(z)   (0 for a source class with P(z) = 0),

    and the score is the mean log-likelihood of the "expected empirical predictor"

        LEEP = (1/N) sum_i log sum_z P(y_i | z) theta(x_i)_z.

    A source model whose outputs are one-hot and map one-to-one onto the target classes scores
    log 1 = 0; with one-hot outputs in general LEEP equals :func:`nce` of their argmax.
    Computed in float64 whatever the input dtype.

    Args:
        probabilities: (N, C_s) floating, finite, in [0, 1], each row summing to 1 (within
            max(1e-3, 4 eps of its dtype)), N >= 2.
        labels: (N,) integer target labels, any values; C >= 2 distinct values.

    Returns a 0-dim float64 tensor on the probabilities' device (not differentiable).
    """
    theta = probabilities64("probabilities", probabilities)
    n, num_source = theta.shape
    index, num_classes = class_indices("labels", labels, "probabilities", probabilities)
    joint = theta.new_zeros(num_classes, num_source).index_add_(0, index, theta) / n
    marginal = joint.sum(0)
    conditional = torch.where(marginal > 0, joint / marginal.clamp_min(torch.finfo(
        torch.float64).tiny), 0.0)  # (C, C_s), P(y | z)
    # sum_z P(y_i | z) theta_z >= sum_z theta_z^2 / (N P(z)) > 0: the log is finite.
    expected = (theta * conditional[index]).sum(1)
    return expected.log().mean()


@torch.no_grad()
def nce(source_labels: torch.Tensor, target_labels: torch.Tensor) -> torch.Tensor:
    r"""Negative conditional entropy -H(Y | Z) of the target labels given the source labels:
    higher is better, in [-log C, 0].

    From the empirical joint of the N pairs (z_i, y_i), P(y, z) = #{i: y_i = y, z_i = z} / N and
    P(z) = #{i: z_i = z} / N,

        NCE = sum_{y, z} P(y, z) log P(y | z),   P(y | z) = P(y, z) / P(z),

    (0 log 0 = 0). It is 0 when the source label determines the target label and -log C when they
    are independent and the C target classes are balanced (every pair equally often). The source
    side is hard labels, e.g. ``probabilities.argmax(1)`` of the source model's outputs; for the
    probabilities themselves use :func:`leep`. Computed in float64.

    Args:
        source_labels: (N,) integer source labels z (the source model's predictions), any values,
            N >= 2.
        target_labels: (N,) integer target labels y, any values; C >= 2 distinct values.

    Returns a 0-dim float64 tensor on the labels' device.
    """
    source, num_source = class_indices("source_labels", source_labels, min_classes=1)
    target, num_classes = class_indices("target_labels", target_labels, "source_labels",
                                        source_labels)
    n = source.shape[0]
    counts = torch.bincount(target * num_source + source, minlength=num_classes * num_source)
    counts = counts.view(num_classes, num_source).to(torch.float64)
    # Every source class present occurs, so its count is >= 1.
    return torch.xlogy(counts, counts / counts.sum(0)).sum() / n

