"""Learning without Forgetting: a two-head classifier and the distillation loss on the source head.

Usage: record the source head's logits on the (unshuffled) target training set with
:func:`collect_pretrain_labels` before fine-tuning; during fine-tuning, for a batch with dataset
indices ``idx``, add ``LwFLoss(T)(y_s, recorded[idx].to(y_s.device))`` to the target loss.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .._tensors import check_floating, check_nonempty_batch, positive_int, real_number
from ._common import (
    GlobalAvgPool,
    accumulation_dtype,
    check_module,
    collect_outputs,
    features_dim_of,
    parameter_groups,
)

__all__ = ["Classifier", "LwFLoss", "collect_pretrain_labels"]


class Classifier(nn.Module):
    """Backbone with the pre-trained source head kept next to a new target head.

    f = pool_layer(backbone(x)) (global average pooling over the spatial dimensions by default);
    y_s = head_source(f), y_t = head_target(bottleneck(f)). In training, forward → (y_s, y_t); in
    evaluation → y_t. ``head_target`` defaults to nn.Linear(features_dim, num_classes), where
    features_dim is ``bottleneck_dim`` with a bottleneck, else ``backbone.out_features``, else
    ``head_source.in_features``. Co-Tuning uses this same class (``co_tuning.Classifier``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        head_source: nn.Module,
        head_target: nn.Module | None = None,
        bottleneck: nn.Module | None = None,
        bottleneck_dim: int = -1,
        finetune: bool = True,
        pool_layer: nn.Module | None = None,
    ):
        super().__init__()
        self.backbone = check_module(backbone, "backbone")
        self.head_source = check_module(head_source, "head_source")
        self.num_classes = positive_int("num_classes", num_classes)
        self.pool_layer = (
            GlobalAvgPool() if pool_layer is None else check_module(pool_layer, "pool_layer")
        )
        if bottleneck is None:
            self.bottleneck = nn.Identity()
            # the feature size is only needed to build the default target head
            features_dim = (
                features_dim_of(backbone, None, head_source) if head_target is None else None
            )
        else:
            self.bottleneck = check_module(bottleneck, "bottleneck")
            if not isinstance(bottleneck_dim, int) or bottleneck_dim <= 0:
                raise ValueError(
                    "bottleneck_dim must be a positive int with a bottleneck, "
                    f"got {bottleneck_dim!r}"
                )
            features_dim = bottleneck_dim
        self.features_dim = features_dim
        if head_target is None:
            self.head_target = nn.Linear(features_dim, num_classes)
        else:
            self.head_target = check_module(head_target, "head_target")
        self.finetune = bool(finetune)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_layer(self.backbone(x))

    def forward_source(self, x: torch.Tensor) -> torch.Tensor:
        """The source head's logits y_s only."""
        return self.head_source(self.features(x))

    def forward(self, x: torch.Tensor):
        f = self.features(x)
        y_t = self.head_target(self.bottleneck(f))
        if self.training:
            return self.head_source(f), y_t
        return y_t

    def get_parameters(self, base_lr: float = 1.0) -> list[dict]:
        """Optimizer groups: pre-trained parts (backbone, source head) at 0.1·base_lr when
        ``finetune`` (else base_lr), new parts (bottleneck, target head) at base_lr."""
        pretrained_lr = 0.1 * base_lr if self.finetune else base_lr
        return parameter_groups(
            [
                (self.backbone, pretrained_lr),
                (self.head_source, pretrained_lr),
                (self.bottleneck, base_lr),
                (self.head_target, base_lr),
            ]
        )


def source_logits(classifier: nn.Module, data_loader: Iterable, device, progress: bool, desc: str):
    """(source-head logits (N, N_p), targets or None) over the loader, on the CPU.

    A :class:`Classifier` contributes its source head; any other module is taken to output the
    source-task logits itself.
    """
    check_module(classifier, "classifier")
    forward = classifier.forward_source if isinstance(classifier, Classifier) else classifier
    return collect_outputs(forward, classifier, data_loader, device, progress, desc)


def collect_pretrain_labels(
    data_loader: Iterable, classifier: nn.Module, device=None, progress: bool = True
) -> torch.Tensor:
    """The source head's logits on every sample of ``data_loader``, in the loader's order.

    Call before fine-tuning, with a loader that does not shuffle, and index the result by dataset
    index during training. ``classifier`` is a :class:`Classifier` (its source head is used) or a
    module that outputs the source logits. Runs in eval mode without gradients; returns (N, N_p)
    on the CPU (``device`` is where the model runs; by default the model's device).
    """
    logits, _ = source_logits(
        classifier, data_loader, device, progress, "recording source predictions"
    )
    return logits


def check_logit_pair(input: torch.Tensor, target: torch.Tensor) -> None:
    """Both floating (b, N) with b >= 1, alike, on one device."""
    check_floating("input", input)
    check_floating("target", target)
    if input.dim() != 2 or input.shape != target.shape:
        raise ValueError(
            "input and target must both be (b, N) with the same shape, got "
            f"{tuple(input.shape)} and {tuple(target.shape)}"
        )
    check_nonempty_batch("input", input)
    if input.device != target.device:
        raise ValueError(f"input is on {input.device} but target is on {target.device}")


class LwFLoss(nn.Module):
    """Distillation from the recorded source predictions onto the current source head.

    forward(input, target), both (b, N_p) logits: ``input`` the source head's current output,
    ``target`` its output recorded before fine-tuning. With p = softmax(target / T) and
    q = softmax(input / T), the loss is T² · (1/b) Σ_b KL(p_b ‖ q_b) (the T² keeps gradient
    magnitudes comparable across temperatures). Computed in float32 for half inputs.
    """

    def __init__(self, T: float = 2.0):
        super().__init__()
        self.T = real_number("T", T, positive=True)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_logit_pair(input, target)
        dtype = accumulation_dtype(input.dtype)
        log_q = F.log_softmax(input.to(dtype) / self.T, dim=1)
        log_p = F.log_softmax(target.detach().to(dtype) / self.T, dim=1)
        kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
        return self.T**2 * kl
