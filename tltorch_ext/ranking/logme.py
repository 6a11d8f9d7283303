"""LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
ICML 2021): the maximised evidence of a Bayesian linear model from the features to each class."""
import math

import torch
import torch.nn.functional as F

from .._tensors import positive_int, real_number
from ._checks import class_indices, features64

__all__ = ["log_me"]


def _statistics(alpha, beta, sigma, z2, outside):
    """gamma, ||m||^2, ||y - F m||^2 and the (k, C) matrix alpha + beta sigma_i for every class at
    once; alpha, beta (C,), sigma (k,), z2 (k, C), outside (C,)."""
    scaled = beta * sigma[:, None]  # beta sigma_i, (k, C)
    denominator = alpha + scaled  # alpha + beta sigma_i
    gamma = (scaled / denominator).sum(0)
    mean_norm2 = (beta.square() * sigma[:, None] * z2 / denominator.square()).sum(0)
    residual2 = outside + (alpha.square() * z2 / denominator.square()).sum(0)
    return gamma, mean_norm2, residual2, denominator


@torch.no_grad()
def log_me(features: torch.Tensor, labels: torch.Tensor, *, tol: float = 1e-5,
           max_iter: int = 100) -> torch.Tensor:
    r"""LogME score of ``features`` for the classification task ``labels``: higher is better.

    For each class c the target is the one-hot column y = [labels == c] (N,), modelled as
    y = F w + noise with prior w ~ N(0, alpha^-1 I_D) and noise ~ N(0, beta^-1 I_N). Its log
    evidence is

        L(alpha, beta) = N/2 log beta + D/2 log alpha - N/2 log 2 pi
                         - beta/2 ||y - F m||^2 - alpha/2 ||m||^2 - 1/2 log det A,

    with A = alpha I_D + beta F^T F and m = beta A^-1 F^T y the posterior mean of w. With the thin
    SVD F = U diag(s) V^T (k = min(N, D) singular values, sigma_i = s_i^2 the eigenvalues of
    F^T F, the other D - k of them 0) and z = U^T y, every term is a sum over i = 1..k:

        ||m||^2        = sum_i beta^2 sigma_i z_i^2 / (alpha + beta sigma_i)^2
        ||y - F m||^2  = (||y||^2 - ||z||^2) + sum_i alpha^2 z_i^2 / (alpha + beta sigma_i)^2
        log det A      = sum_i log(alpha + beta sigma_i) + (D - k) log alpha.

    L is maximised by the fixed-point iteration of MacKay's evidence framework, from
    alpha = beta = 1:

        gamma = sum_i beta sigma_i / (alpha + beta sigma_i)
        alpha <- gamma / ||m||^2
        beta  <- (N - gamma) / ||y - F m||^2

    (m, gamma and the residual evaluated at the current alpha, beta). A class stops when both
    |alpha_new - alpha| <= tol * alpha and |beta_new - beta| <= tol * beta (it keeps the new
    values), or after ``max_iter`` updates, whichever comes first; L is then evaluated at its
    last (alpha, beta). The score is

        LogME = (1/C) sum_c L_c(alpha_c, beta_c) / N.

    The SVD of F is computed once and shared by the classes, and the classes iterate together as
    vectors of (alpha, beta) (a class that has converged is held fixed). Everything is computed in
    float64 whatever the input dtype; the features are used as given (not centred: the model has
    no bias).

    Args:
        features: (N, D) floating features of the target data from the candidate model, N >= 2.
        labels: (N,) integer class labels, any values; the classes are the C >= 2 distinct values
            present.
        tol: relative convergence tolerance of alpha and beta (> 0).
        max_iter: most fixed-point updates per class (>= 1).

    Returns a 0-dim float64 tensor on the features' device (not differentiable).
    """
    tol = real_number("tol", tol, positive=True)
    max_iter = positive_int("max_iter", max_iter)
    f = features64("features", features)
    n, d = f.shape
    index, num_classes = class_indices("labels", labels, "features", features)
    y = F.one_hot(index, num_classes).to(torch.float64)  # (N, C)

    u, s, _ = torch.linalg.svd(f, full_matrices=False)
    sigma = s.square()  # (k,)
    k = sigma.shape[0]
    z2 = (u.T @ y).square()  # (k, C)
    # The part of y outside the column space of U; clamped: rounding must not make it negative.
    outside = (y.sum(0) - z2.sum(0)).clamp_min(0.0)  # ||y||^2 = class count for a one-hot y

    alpha = torch.ones(num_classes, dtype=torch.float64, device=f.device)
    beta = torch.ones_like(alpha)
    done = torch.zeros(num_classes, dtype=torch.bool, device=f.device)
    tiny = torch.finfo(torch.float64).tiny
    for _ in range(max_iter):
        gamma, mean_norm2, residual2, _ = _statistics(alpha, beta, sigma, z2, outside)
        new_alpha = gamma / mean_norm2.clamp_min(tiny)
        new_beta = (n - gamma) / residual2.clamp_min(tiny)
        converged = ((new_alpha - alpha).abs() <= tol * alpha) & \
                    ((new_beta - beta).abs() <= tol * beta)
        alpha = torch.where(done, alpha, new_alpha)
        beta = torch.where(done, beta, new_beta)
        done = done | converged
        if bool(done.all()):
            break

    _, mean_norm2, residual2, denominator = _statistics(alpha, beta, sigma, z2, outside)
    log_det = denominator.log().sum(0) + (d - k) * alpha.log()
    evidence = (n / 2 * beta.log() + d / 2 * alpha.log() - n / 2 * math.log(2 * math.pi)
                - beta / 2 * residual2 - alpha / 2 * mean_norm2 - log_det / 2)
    return (evidence / n).mean()
