"""Hinton's knowledge-distillation loss (docs/api_distill.md)."""
import torch
import torch.nn.functional as F
from torch import nn

from .._tensors import real_number

__all__ = ["KDLoss"]


class KDLoss(nn.Module):
    r"""Knowledge distillation at temperature ``T`` (Hinton, Vinyals and Dean, 2015).

    With p = softmax(t / T) the teacher's softened distribution and q = softmax(s / T) the
    student's, the loss of a batch of N rows is

        T² · (1/N) Σ_n Σ_c p_nc (log p_nc − log q_nc)  =  T² · KL(p ‖ q), averaged over the batch.

    The T² factor keeps the gradient magnitude of the soft targets comparable across temperatures.
    The teacher's distribution is a fixed target: no gradient flows into ``teacher_logits``.
    Computed in float32 (float64 for float64 logits); the result has the student logits' dtype.

    Args:
        T: temperature, a finite positive number.

    Shape:
        forward(student_logits, teacher_logits): both (N, C) on the same device → scalar.
    """

    def __init__(self, T: float):
        super().__init__()
        self.T = real_number("T", T, positive=True)

    def extra_repr(self) -> str:
        return f"T={self.T}"

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        named = (("student_logits", student_logits), ("teacher_logits", teacher_logits))
        for name, logits in named:
            if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got "
                                f"{getattr(logits, 'dtype', type(logits).__name__)}")
            if logits.dim() != 2 or logits.shape[0] == 0:
                raise ValueError(f"{name} must have shape (N, C) with N >= 1, got "
                                 f"{tuple(logits.shape)}")
        if student_logits.shape != teacher_logits.shape:
            raise ValueError("student_logits and teacher_logits must have the same shape (N, C), "
                             f"got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
        if student_logits.device != teacher_logits.device:
            raise ValueError("student_logits and teacher_logits must be on the same device, got "
                             f"{student_logits.device} and {teacher_logits.device}")
        acc = torch.promote_types(student_logits.dtype, torch.float32)
        log_q = F.log_softmax(student_logits.to(acc) / self.T, dim=1)
        log_p = F.log_softmax(teacher_logits.detach().to(acc) / self.T, dim=1)
        kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
        return (kl * self.T**2).to(student_logits.dtype)
