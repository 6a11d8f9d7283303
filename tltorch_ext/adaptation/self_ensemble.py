"""Self-ensembling for domain adaptation (French et al., 2018): a mean teacher whose weights are an
exponential moving average of the student's, a consistency loss between their predictions on
target data (masked by the teacher's confidence), and a class-balance term."""
import copy
from typing import Callable

import torch
from torch import nn

from .._tensors import check_floating, check_nonempty_batch, positive_int, real_number
from ._checks import check_per_sample, check_reduction, reduce

__all__ = [
    "ConsistencyLoss",
    "L2ConsistencyLoss",
    "ClassBalanceLoss",
    "EmaTeacher",
    "confidence_mask",
]


def confidence_mask(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """m_i = [max_c probs[i, c] ≥ threshold]: a bool (N,) mask of the confident predictions.

    Args:
        probs: (N, C) class probabilities (typically the teacher's softmax).
        threshold: in [0, 1].
    """
    check_floating("probs", probs, ndim=2)
    threshold = real_number("threshold", threshold, 0.0, 1.0)
    return probs.amax(dim=1) >= threshold


class ConsistencyLoss(nn.Module):
    """reduce(d(y, y_teacher) ⊙ mask) with a per-sample distance d.

    Args:
        distance_measure: callable (y, y_teacher) → (N,) per-sample distances.
        reduction: 'none' (the (N,) vector), 'mean' (over all N samples, masked ones counting as
            zero) or 'sum'.

    ``forward(y, y_teacher, mask=None)``: y and y_teacher of the same shape (N, ...); mask (N,),
    bool or floating (for example from :func:`confidence_mask`); None means all ones. The teacher's
    prediction is used as given: pass it detached, or from an :class:`EmaTeacher`, which has no
    gradients.
    """

    def __init__(self, distance_measure: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 reduction="mean"):
        super().__init__()
        if not callable(distance_measure):
            raise TypeError(f"distance_measure must be callable, got {type(distance_measure)}")
        self.distance_measure = distance_measure
        self.reduction = check_reduction(reduction)

    def forward(self, y: torch.Tensor, y_teacher: torch.Tensor, mask=None) -> torch.Tensor:
        check_nonempty_batch("y", check_floating("y", y))
        check_floating("y_teacher", y_teacher)
        if y.ndim == 0 or y.shape != y_teacher.shape or y.device != y_teacher.device:
            raise ValueError(
                f"y and y_teacher must have the same shape (N, ...) and device, got "
                f"{tuple(y.shape)} on {y.device} and {tuple(y_teacher.shape)} on {y_teacher.device}"
            )
        n = y.shape[0]
        distance = self.distance_measure(y, y_teacher)
        if not isinstance(distance, torch.Tensor) or distance.shape != (n,):
            got = tuple(distance.shape) if isinstance(distance, torch.Tensor) else type(distance)
            raise ValueError(
                f"distance_measure must return one value per sample, shape ({n},), got {got}"
            )
        if mask is not None:
            mask = check_per_sample("mask", mask, n, y.device, allow_bool=True)
            distance = distance * mask.to(distance.dtype)
        return reduce(distance, self.reduction)


def _squared_l2(y: torch.Tensor, y_teacher: torch.Tensor) -> torch.Tensor:
    return (y - y_teacher).square().flatten(1).sum(dim=1)


class L2ConsistencyLoss(ConsistencyLoss):
    """:class:`ConsistencyLoss` with d(y, y_teacher) = Σ_c (y_c − y_teacher_c)², the squared L2
    distance summed over classes (and any further dimensions) of each sample."""

    def __init__(self, reduction="mean"):
        super().__init__(_squared_l2, reduction)


class ClassBalanceLoss(nn.Module):
    """Binary cross-entropy between the batch-mean prediction p̄ = mean_i pred[i] (C,) and the
    uniform vector u = 1/C:

        L = −(1/C) Σ_c [u log p̄_c + (1 − u) log(1 − p̄_c)],

    with each log clamped below at −100 (as torch's binary cross-entropy does), computed in float32
    or wider and returned in pred's dtype. It keeps self-training from collapsing onto a few
    classes.

    Args:
        num_classes: C.

    ``forward(pred)``: pred (N, C), class probabilities (for example a softmax).
    """

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = positive_int("num_classes", num_classes)

    def forward(self, pred: torch.Tensor) -> torch.Tensor:
        check_floating("pred", pred, ndim=2)
        if pred.shape[0] == 0 or pred.shape[1] != self.num_classes:
            raise ValueError(
                f"pred must have shape (N >= 1, {self.num_classes}), got {tuple(pred.shape)}"
            )
        mean_pred = pred.to(torch.promote_types(pred.dtype, torch.float32)).mean(dim=0)
        uniform = 1.0 / self.num_classes
        log_p = mean_pred.log().clamp_min(-100.0)
        log_not_p = (-mean_pred).log1p().clamp_min(-100.0)
        loss = -(uniform * log_p + (1.0 - uniform) * log_not_p).mean()
        return loss.to(pred.dtype)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"


class EmaTeacher(nn.Module):
    """Mean teacher: a copy of ``model`` whose parameters follow the student's by exponential moving
    average. ``update()`` sets, for every parameter pair,

        θ'_teacher ← α θ'_teacher + (1 − α) θ_student,

    and copies every buffer (BatchNorm statistics, counters) from the student.

    Args:
        model: the student; the teacher starts as a deep copy of it, with gradients off.
        alpha: α in [0, 1]; 0 copies the student, 1 freezes the teacher.

    Calling the EmaTeacher runs the teacher. ``train()``/``eval()`` set the teacher's mode only, so
    its dropout / BatchNorm behaviour is the caller's choice, independent of the student's. The
    student is referenced, not registered as a submodule: ``state_dict`` and ``.to(device)`` cover
    the teacher alone, and the student keeps its own; move both to the same device before
    ``update()``.
    """

    def __init__(self, model: nn.Module, alpha: float):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model)}")
        self.alpha = real_number("alpha", alpha, 0.0, 1.0)
        self.teacher = copy.deepcopy(model)
        self.teacher.requires_grad_(False)
        # Stored outside _modules so that the student's state is not duplicated in ours.
        self.__dict__["student"] = model

    @staticmethod
    def _pairs(kind, teacher_named, student_named):
        """Match the teacher's and the student's tensors of one kind by name, checking each pair."""
        teacher_named, student_named = list(teacher_named), list(student_named)
        if [name for name, _ in teacher_named] != [name for name, _ in student_named]:
            raise ValueError(f"the student's {kind} no longer match the teacher's by name")
        teacher, student = [], []
        for (name, t), (_, s) in zip(teacher_named, student_named):
            if t.shape != s.shape or t.dtype != s.dtype or t.device != s.device:
                raise ValueError(
                    f"{kind} {name!r}: the teacher has shape {tuple(t.shape)}, {t.dtype} on "
                    f"{t.device}, the student {tuple(s.shape)}, {s.dtype} on {s.device}; move the "
                    f"teacher with .to() as the student"
                )
            teacher.append(t)
            student.append(s)
        return teacher, student

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step of the teacher's parameters towards the student's; buffers copied."""
        teacher_params, student_params = self._pairs(
            "parameters", self.teacher.named_parameters(), self.student.named_parameters()
        )
        if teacher_params:
            # α θ' + (1 − α) θ = θ' + (1 − α)(θ − θ'): one fused lerp over all parameters.
            torch._foreach_lerp_(teacher_params, student_params, 1.0 - self.alpha)
        teacher_buffers, student_buffers = self._pairs(
            "buffers", self.teacher.named_buffers(), self.student.named_buffers()
        )
        if teacher_buffers:
            torch._foreach_copy_(teacher_buffers, student_buffers)

    def forward(self, *args, **kwargs):
        return self.teacher(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
