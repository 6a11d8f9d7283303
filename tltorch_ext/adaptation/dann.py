"""Domain-adversarial training (DANN, Ganin et al., 2016): a discriminator tells source features
from target features through a gradient reversal layer, so the feature extractor learns to confuse
it."""
import torch
import torch.nn.functional as F
from torch import nn

from .._tensors import check_floating, positive_int
from ._checks import check_per_sample, check_reduction, reduce
from .grl import WarmStartGradientReverseLayer

__all__ = ["DomainDiscriminator", "DomainAdversarialLoss"]


class DomainDiscriminator(nn.Sequential):
    """Two-hidden-layer MLP from features (N, in_feature) to domain logits (N, out_features).

    With ``batch_norm``: Linear → BatchNorm1d → ReLU, twice, then Linear. Without: Linear → ReLU →
    Dropout(0.5), twice, then Linear. The output is raw logits (no sigmoid), so that the loss can
    use the numerically stable, autocast-safe "with logits" forms.

    Args:
        in_feature: feature dimension.
        hidden_size: width of both hidden layers.
        batch_norm: use BatchNorm1d (True) or dropout (False) after each hidden linear layer.
        out_features: 1 for the sigmoid variant of :class:`DomainAdversarialLoss`, 2 for its
            softmax variant.
    """

    def __init__(self, in_feature: int, hidden_size: int, batch_norm=True, out_features=1):
        in_feature = positive_int("in_feature", in_feature)
        hidden_size = positive_int("hidden_size", hidden_size)
        if out_features not in (1, 2):
            raise ValueError(
                f"out_features must be 1 (sigmoid) or 2 (softmax), got {out_features!r}"
            )
        layers = []
        for fan_in in (in_feature, hidden_size):
            layers.append(nn.Linear(fan_in, hidden_size))
            if batch_norm:
                layers += [nn.BatchNorm1d(hidden_size), nn.ReLU()]
            else:
                layers += [nn.ReLU(), nn.Dropout(0.5)]
        layers.append(nn.Linear(hidden_size, out_features))
        super().__init__(*layers)


class DomainAdversarialLoss(nn.Module):
    """DANN's domain loss on gradient-reversed features.

    The discriminator D sees GRL([f_s; f_t]); source samples carry domain label 1, target samples 0.
    Per sample, ℓ_i = w_i · CE(D(f_i), label_i), where CE is binary cross-entropy with logits
    (``sigmoid=True``, D outputs one logit) or softmax cross-entropy over two logits
    (``sigmoid=False``, class 1 = source), and w_i = 1 unless ``w_s``/``w_t`` are given. Then

        'mean': ½ (mean_{i∈s} ℓ_i + mean_{j∈t} ℓ_j)      (each domain counts equally)
        'sum':  ½ (Σ_{i∈s} ℓ_i + Σ_{j∈t} ℓ_j)
        'none': ½ [ℓ_s; ℓ_t], a vector of N_s + N_t values whose sum is the 'sum' result.

    Minimizing it trains D to separate the domains while the reversed gradient trains the feature
    extractor to make them indistinguishable. Both cross-entropies come from logits, so the loss is
    stable in float16/bfloat16 and under autocast (which runs them in float32).

    After each call, ``domain_discriminator_accuracy`` holds ½ (acc_s + acc_t) in percent (a
    detached 0-dim tensor; ``float()`` it to log), acc over each domain's samples, a source sample
    counting as right when D gives it probability ≥ ½ of being source.

    Args:
        domain_discriminator: module mapping features (N, ...) to logits (N, 1) or (N,) when
            ``sigmoid``, else (N, 2).
        reduction: 'none' | 'mean' | 'sum'.
        grl: the gradient reversal module; by default ``WarmStartGradientReverseLayer(alpha=1.0,
            lo=0.0, hi=1.0, max_iters=1000, auto_step=True)``.
        sigmoid: one-logit binary cross-entropy (True) or two-logit softmax cross-entropy (False).
    """

    def __init__(self, domain_discriminator: nn.Module, reduction="mean", grl=None, sigmoid=True):
        super().__init__()
        if not isinstance(domain_discriminator, nn.Module):
            raise TypeError(
                f"domain_discriminator must be an nn.Module, got {type(domain_discriminator)}"
            )
        if grl is not None and not callable(grl):
            raise TypeError(f"grl must be a callable module or None, got {type(grl)}")
        self.domain_discriminator = domain_discriminator
        self.reduction = check_reduction(reduction)
        self.grl = grl if grl is not None else WarmStartGradientReverseLayer(
            alpha=1.0, lo=0.0, hi=1.0, max_iters=1000, auto_step=True
        )
        self.sigmoid = bool(sigmoid)
        self.domain_discriminator_accuracy = None

    def _logits(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.domain_discriminator(self.grl(features))
        n = features.shape[0]
        if self.sigmoid:
            if logits.shape not in ((n,), (n, 1)):
                raise ValueError(
                    f"with sigmoid=True the domain discriminator must return logits of shape "
                    f"({n}, 1) or ({n},), got {tuple(logits.shape)}"
                )
            return logits.reshape(n)
        if logits.shape != (n, 2):
            raise ValueError(
                f"with sigmoid=False the domain discriminator must return logits of shape "
                f"({n}, 2), got {tuple(logits.shape)}"
            )
        return logits

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor, w_s=None, w_t=None) -> torch.Tensor:
        check_floating("f_s", f_s)
        check_floating("f_t", f_t)
        if f_s.ndim == 0 or f_s.shape[0] == 0 or f_t.ndim == 0 or f_t.shape[0] == 0:
            raise ValueError(
                f"f_s and f_t must hold at least one sample each (N, ...), got shapes "
                f"{tuple(f_s.shape)} and {tuple(f_t.shape)}"
            )
        if f_s.shape[1:] != f_t.shape[1:] or f_s.device != f_t.device:
            raise ValueError(
                f"f_s and f_t must share the feature shape and device, got {tuple(f_s.shape)} on "
                f"{f_s.device} and {tuple(f_t.shape)} on {f_t.device}"
            )
        n_s, n_t = f_s.shape[0], f_t.shape[0]
        # Checked before the GRL runs: a warm-start GRL steps its schedule on every call.
        if w_s is not None:
            check_per_sample("w_s", w_s, n_s, f_s.device)
        if w_t is not None:
            check_per_sample("w_t", w_t, n_t, f_t.device)
        logits = self._logits(torch.cat([f_s, f_t]))
        is_source = torch.arange(n_s + n_t, device=logits.device) < n_s
        if self.sigmoid:
            per_sample = F.binary_cross_entropy_with_logits(
                logits, is_source.to(logits.dtype), reduction="none"
            )
            correct = (logits.detach() >= 0) == is_source
        else:
            labels = is_source.long()
            per_sample = F.cross_entropy(logits, labels, reduction="none")
            correct = logits.detach().argmax(dim=1) == labels
        loss_s, loss_t = per_sample.split([n_s, n_t])
        if w_s is not None:
            loss_s = loss_s * w_s
        if w_t is not None:
            loss_t = loss_t * w_t

        correct_s, correct_t = correct.split([n_s, n_t])
        self.domain_discriminator_accuracy = 50.0 * (
            correct_s.float().mean() + correct_t.float().mean()
        )
        if self.reduction == "none":
            return 0.5 * torch.cat([loss_s, loss_t])
        return 0.5 * (reduce(loss_s, self.reduction) + reduce(loss_t, self.reduction))

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, sigmoid={self.sigmoid}"
