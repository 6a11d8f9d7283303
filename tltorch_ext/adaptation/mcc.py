"""Minimum Class Confusion (MCC, Jin et al., 2020): on unlabelled target data, penalize how much
the classifier confuses classes with each other, measured on the batch's predictions."""
import torch
from torch import nn

from .._tensors import check_floating, check_nonempty_batch, real_number, stat_dtype

__all__ = ["MinimumClassConfusionLoss"]


class MinimumClassConfusionLoss(nn.Module):
    """MCC's class-confusion loss on the target logits z (B, C).

    1. Temperature-scaled predictions: Ŷ = softmax(z / T) (B, C).
    2. Sample weights from the certainty of each prediction, H_i = −Σ_c Ŷ_ic log Ŷ_ic:

           W_ii = B (1 + exp(−H_i)) / Σ_j (1 + exp(−H_j)),

       a diagonal matrix normalised to trace B. The weights are constants (no gradient flows
       through them, as in the authors' code).
    3. Class confusion C = Ŷᵀ W Ŷ (C × C), C_jk = Σ_i W_ii Ŷ_ij Ŷ_ik, and its row-normalised form
       C̃_jk = C_jk / Σ_k' C_jk'.
    4. L = (Σ_jk C̃_jk − Σ_j C̃_jj) / C, the mean over classes of the confusion off the diagonal.

    Every row of C̃ sums to one, so L = 1 − tr(C̃)/C lies in [0, 1 − 1/C]: 0 when each prediction
    is one-hot (no class is confused with another), 1 − 1/C for uniform predictions. Since each
    row is normalised, the scale of W (the factor B) does not change L. A class that the batch
    gives no probability at all (a row of C that underflows to 0) contributes no confusion: its row
    sum is clamped below at the dtype's smallest normal number instead of dividing by zero.

    Computed in float32 for float16/bfloat16 logits (float64 for float64) and returned in that
    dtype.

    Args:
        temperature: T, finite and > 0.

    ``forward(logits)``: the target batch's logits (B ≥ 1, C) → a 0-dim tensor.
    """

    def __init__(self, temperature: float = 2.5):
        super().__init__()
        self.temperature = real_number("temperature", temperature, positive=True)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        check_nonempty_batch("logits", check_floating("logits", logits, ndim=2))
        batch, num_classes = logits.shape
        z = logits.to(stat_dtype(logits.dtype)) / self.temperature
        log_y = torch.log_softmax(z, dim=1)
        y = log_y.exp()
        with torch.no_grad():
            certainty = 1.0 + torch.exp((y * log_y).sum(dim=1))   # 1 + exp(−H_i)
            weight = certainty * (batch / certainty.sum())
        confusion = (y * weight.unsqueeze(1)).T @ y                 # Ŷᵀ W Ŷ
        row_sums = confusion.sum(dim=1, keepdim=True).clamp_min(torch.finfo(confusion.dtype).tiny)
        confusion = confusion / row_sums
        return (confusion.sum() - confusion.diagonal().sum()) / num_classes

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
