"""Margin Disparity Discrepancy (MDD, Zhang et al., 2019), classification variant: an adversarial
classifier head h' is trained to agree with the main head h on the source domain and to disagree
with it on the target domain; the feature extractor, behind a gradient reversal layer, is trained
against it."""
import math

import torch
from torch import nn

from .._tensors import check_floating, check_nonempty_batch, real_number, stat_dtype
from ._checks import check_reduction, reduce

__all__ = ["MarginDisparityDiscrepancy"]

# log(1 − p) is clamped below at log(1e-15), as the authors' code clamps 1 − p at 1e-15: without a
# floor the feature extractor, which minimizes the value, could push it towards −∞.
_LOG_FLOOR = math.log(1e-15)


def _log_one_minus_softmax_at(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log(1 − softmax(logits)[i, index_i]) = logsumexp_{c ≠ index_i} z_c − logsumexp_c z_c, exact
    (no 1 − p cancellation) for every row."""
    others = logits.scatter(1, index.unsqueeze(1), -math.inf)
    return torch.logsumexp(others, dim=1) - torch.logsumexp(logits, dim=1)


class MarginDisparityDiscrepancy(nn.Module):
    """MDD's discrepancy for classification, the value the adversarial head h' maximizes:

        D = −γ · mean_{i∈s} CE(y_s_adv_i, ŷ_s_i) + mean_{j∈t} log(1 − softmax(y_t_adv_j)[ŷ_t_j]),

    with ŷ = argmax_c y the main head's predicted class on each sample (a constant), CE the softmax
    cross-entropy −log softmax(y_adv)[ŷ], and γ = ``margin`` (exp(ρ) in the paper). D is at most
    0; h' raises it by agreeing with h on the source (small CE) and putting little probability on
    h's class on the target. log(1 − p) is evaluated as logsumexp over the other classes minus
    logsumexp over all classes (exact even when p is close to 1), then clamped below at
    log(1e-15) ≈ −34.5 (the bound the authors' code uses).

    Training (as in the paper): the adversarial head takes the features through a gradient reversal
    layer, and everything minimizes ``task_loss − trade_off · D``; h' then maximizes D, while the
    reversed gradient makes the feature extractor minimize it. The main head's logits y_s, y_t
    only pick ŷ; no gradient reaches them through this loss.

    Reductions: 'mean' is D above, 'sum' is −γ Σ_{i∈s} CE_i + Σ_{j∈t} log(1 − p_j), 'none' the
    N_s + N_t per-sample terms [−γ CE_s; log(1 − p_t)], whose sum is the 'sum' result.

    Computed in float32 for float16/bfloat16 logits (float64 for float64) and returned in that
    dtype.

    Args:
        margin: γ, finite and > 0.
        reduction: 'none' | 'mean' | 'sum'.

    ``forward(y_s, y_s_adv, y_t, y_t_adv)``: logits (N, C ≥ 2) of the main and adversarial heads on
    the source (N_s) and target (N_t) batches.
    """

    def __init__(self, margin: float = 4.0, reduction="mean"):
        super().__init__()
        self.margin = real_number("margin", margin, positive=True)
        self.reduction = check_reduction(reduction)

    def forward(self, y_s: torch.Tensor, y_s_adv: torch.Tensor, y_t: torch.Tensor,
                y_t_adv: torch.Tensor) -> torch.Tensor:
        named = (("y_s", y_s), ("y_s_adv", y_s_adv), ("y_t", y_t), ("y_t_adv", y_t_adv))
        for name, y in named:
            check_nonempty_batch(name, check_floating(name, y, ndim=2))
        num_classes = y_s.shape[1]
        if num_classes < 2:
            raise ValueError(f"y_s must have at least 2 classes (N, C >= 2), got shape "
                             f"{tuple(y_s.shape)}")
        for (main_name, main), (adv_name, adv) in ((named[0], named[1]), (named[2], named[3])):
            if main.shape != adv.shape:
                raise ValueError(f"{main_name} and {adv_name} must have the same shape, got "
                                 f"{tuple(main.shape)} and {tuple(adv.shape)}")
        if y_t.shape[1] != num_classes:
            raise ValueError(f"y_s and y_t must have the same number of classes, got shapes "
                             f"{tuple(y_s.shape)} and {tuple(y_t.shape)}")
        for name, y in named[1:]:
            if y.device != y_s.device:
                raise ValueError(f"{name} is on {y.device} but y_s is on {y_s.device}")

        acc = stat_dtype(torch.promote_types(y_s_adv.dtype, y_t_adv.dtype))
        pred_s, pred_t = y_s.detach().argmax(dim=1), y_t.detach().argmax(dim=1)
        adv_s, adv_t = y_s_adv.to(acc), y_t_adv.to(acc)
        cross_entropy_s = -torch.log_softmax(adv_s, dim=1).gather(1, pred_s.unsqueeze(1))
        source = -self.margin * cross_entropy_s.squeeze(1)
        target = _log_one_minus_softmax_at(adv_t, pred_t).clamp_min(_LOG_FLOOR)
        if self.reduction == "none":
            return torch.cat([source, target])
        return reduce(source, self.reduction) + reduce(target, self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}"
