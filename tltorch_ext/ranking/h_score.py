"""H-score (Bao et al., "An Information-Theoretic Approach to Transferability in Task Transfer
Learning", ICIP 2019) and its shrinkage-regularised form (Ibrahim et al., "Newer is not always
better: Rethinking transferability metrics, their peculiarities, stability and performance",
ECML PKDD 2022)."""
import torch

from ._checks import class_indices, features64

__all__ = ["h_score"]


@torch.no_grad()
def h_score(features: torch.Tensor, labels: torch.Tensor, shrinkage: bool = False) -> torch.Tensor:
    r"""H-score of ``features`` for the classification task ``labels``: higher is better, >= 0.

    With mu the mean feature, mu_c the mean of class c (N_c samples) and the covariances

        cov(f)       = (1/N) sum_i (f_i - mu)(f_i - mu)^T                      (D, D)
        cov(E[f|y])  = (1/N) sum_i (mu_{y_i} - mu)(mu_{y_i} - mu)^T
                     = sum_c (N_c / N) (mu_c - mu)(mu_c - mu)^T,

    the score is

        H = tr(cov(f)^+ cov(E[f|y]))

    with ^+ the Moore-Penrose pseudo-inverse (cov(f) is singular when N <= D or features are
    collinear). H is invariant under invertible affine maps of the features and does not depend
    on the covariances' normalisation (1/N here for both).

    With ``shrinkage=True``, cov(f) is replaced by its Ledoit-Wolf (2004) shrinkage towards a
    scaled identity and the between-class covariance is scaled to match:

        S = cov(f),  nu = tr(S) / D,
        d^2 = ||S - nu I||_F^2,   b^2 = min(d^2, (1/N^2) sum_i ||x_i x_i^T - S||_F^2),
        rho = b^2 / d^2   (0 when d^2 = 0),    x_i = f_i - mu,
        H_rho = tr(((1 - rho) S + rho nu I)^+ (1 - rho) cov(E[f|y])),

    where (1/N^2) sum_i ||x_i x_i^T - S||_F^2 = (sum_i ||x_i||^4 / N - ||S||_F^2) / N. The
    shrunk covariance is well conditioned when N is small against D, where the plain H-score's
    estimate of cov(f)^-1 is unstable. Computed in float64 whatever the input dtype.

    Args:
        features: (N, D) floating features of the target data, N >= 2.
        labels: (N,) integer class labels, any values; C >= 2 distinct values.
        shrinkage: Ledoit-Wolf shrinkage of cov(f) (a bool).

    Returns a 0-dim float64 tensor on the features' device (not differentiable).
    """
    if not isinstance(shrinkage, bool):
        raise TypeError(f"shrinkage must be a bool, got {type(shrinkage).__name__}")
    f = features64("features", features)
    n, d = f.shape
    index, num_classes = class_indices("labels", labels, "features", features)

    x = f - f.mean(0)
    cov_f = x.T @ x / n
    counts = torch.bincount(index, minlength=num_classes).to(torch.float64)
    class_means = x.new_zeros(num_classes, d).index_add_(0, index, x) / counts[:, None]
    cov_between = (class_means.T * (counts / n)) @ class_means
    if shrinkage:
        nu = torch.diagonal(cov_f).sum() / d
        identity = torch.eye(d, dtype=torch.float64, device=f.device)
        d2 = (cov_f - nu * identity).square().sum()
        b2 = ((x.square().sum(1).square().sum() / n - cov_f.square().sum()) / n).clamp_min(0.0)
        rho = torch.where(d2 > 0, torch.minimum(b2, d2) / d2.clamp_min(
            torch.finfo(torch.float64).tiny), 0.0)
        cov_f = (1 - rho) * cov_f + rho * nu * identity
        cov_between = (1 - rho) * cov_between
    # tr(P B) of symmetric P, B is the sum of their elementwise product.
    return (torch.linalg.pinv(cov_f, hermitian=True) * cov_between).sum()
