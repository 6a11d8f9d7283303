"""Methods: TargetTask, Run and one set-up per fine-tuning method (SETUPS, METHODS)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import (
    AttentionBehavioralRegularization,
    BatchSpectralShrinkage,
    IntermediateLayerGetter,
    SPRegularization,
    compute_channel_attention,
    convert_model,
)
from ..finetune import co_tuning, lwf
from ._common import (
    BSS_WEIGHT,
    CO_TUNING_WEIGHT,
    DELTA_WEIGHT,
    L2SP_WEIGHT,
    LAYERS,
    LWF_TEMPERATURE,
    LWF_WEIGHT,
    STOCHNORM_P,
)
from .model import SmallCNN, _trainable_copy, _with_new_head


@dataclass
class TargetTask:
    """What every method sees: the source model and the few labelled target samples."""

    source: SmallCNN
    x: torch.Tensor  # (n, C, H, W) on device
    y: torch.Tensor  # (n,) on device
    num_classes: int
    device: torch.device
    progress: bool

    def loader(self, batch_size: int = 64) -> torch.utils.data.DataLoader:
        """Unshuffled (x, y) batches, for the library's data-driven set-up steps."""
        dataset = torch.utils.data.TensorDataset(self.x, self.y)
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)


@dataclass
class Run:
    """A method ready to train: ``loss(x, y, idx)`` on a batch (idx: indices into the train set)."""

    model: nn.Module  # eval mode → target logits; every parameter trains at --lr
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _single_head_run(model: SmallCNN, loss=None) -> Run:
    """A run of a SmallCNN whose loss, ``loss(x, y)``, is the cross-entropy unless given."""
    loss = loss or (lambda x, y: F.cross_entropy(model(x), y))
    return Run(model, lambda x, y, idx: loss(x, y))


def setup_finetune(task: TargetTask) -> Run:
    """Source model with a new head; loss = CE."""
    return _single_head_run(_with_new_head(task.source, task.num_classes))


def setup_scratch(task: TargetTask) -> Run:
    """A freshly initialized SmallCNN of the same shape; loss = CE."""
    width = task.source.head.in_features // 2
    return _single_head_run(SmallCNN(task.x.shape[1], task.num_classes, width).to(task.device))


def setup_l2sp(task: TargetTask) -> Run:
    """L2-SP: loss = CE + w · ½ Σ ‖θ − θ⁰‖² over the parameters shared with the source."""
    model = _with_new_head(task.source, task.num_classes)
    regularization = SPRegularization(task.source, model)
    return _single_head_run(
        model, lambda x, y: F.cross_entropy(model(x), y) + L2SP_WEIGHT * regularization())


def _fit_head(task: TargetTask, steps: int = 100) -> SmallCNN:
    """The source backbone with a linear head fitted on its frozen target features (DELTA's
    attention model: channel importance is measured on the target task)."""
    model = _with_new_head(task.source, task.num_classes).eval()
    with torch.no_grad():
        features = model.features(task.x)
    optimizer = torch.optim.Adam(model.head.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model.head(features), task.y).backward()
        optimizer.step()
    return model


def setup_delta(task: TargetTask) -> Run:
    """DELTA: loss = CE + w · attention-weighted distance between the target and source feature
    maps of LAYERS (channel attention measured once on the target training set)."""
    attention = compute_channel_attention(
        _fit_head(task), list(LAYERS), task.loader(), progress=task.progress)
    regularization = AttentionBehavioralRegularization(attention)
    model = _with_new_head(task.source, task.num_classes)
    source_maps = IntermediateLayerGetter(task.source, list(LAYERS), keep_output=False)
    target_maps = IntermediateLayerGetter(model, list(LAYERS))

    def loss(x, y):
        with torch.no_grad():
            reference, _ = source_maps(x)  # the source model stays in eval mode
        maps, logits = target_maps(x)
        return F.cross_entropy(logits, y) + DELTA_WEIGHT * regularization(reference, maps)

    return _single_head_run(model, loss)


def setup_bss(task: TargetTask) -> Run:
    """BSS: loss = CE + w · (smallest singular value of the batch's pooled features)²."""
    model = _with_new_head(task.source, task.num_classes)
    shrinkage = BatchSpectralShrinkage(k=1)

    def loss(x, y):
        features = model.features(x)
        return F.cross_entropy(model.head(features), y) + BSS_WEIGHT * shrinkage(features)

    return _single_head_run(model, loss)


def setup_stochnorm(task: TargetTask) -> Run:
    """StochNorm: every BatchNorm replaced by StochNorm (p = 0.5); loss = CE."""
    model = convert_model(_with_new_head(task.source, task.num_classes), STOCHNORM_P)
    return _single_head_run(model)


def _two_head_classifier(task: TargetTask, classifier: type[nn.Module]):
    source = _trainable_copy(task.source)
    return classifier(source.backbone, task.num_classes, head_source=source.head).to(task.device)


def setup_co_tuning(task: TargetTask) -> Run:
    """Co-Tuning: loss = CE(y_t) + w · CE(y_s, p(y_s | y_t)), the relationship learned once from
    the source head's predictions on the target training set."""
    classifier = _two_head_classifier(task, co_tuning.Classifier)
    relationship = co_tuning.Relationship(
        task.loader(), classifier, task.device, progress=task.progress)
    co_tuning_loss = co_tuning.CoTuningLoss()

    def loss(x, y, idx):
        y_s, y_t = classifier(x)
        return F.cross_entropy(y_t, y) + CO_TUNING_WEIGHT * co_tuning_loss(y_s, relationship[y])

    return Run(classifier, loss)


def setup_lwf(task: TargetTask) -> Run:
    """LwF: loss = CE(y_t) + w · T²·KL(recorded source-head predictions ‖ current ones)."""
    classifier = _two_head_classifier(task, lwf.Classifier)
    recorded = lwf.collect_pretrain_labels(
        task.loader(), classifier, task.device, progress=task.progress).to(task.device)
    distillation = lwf.LwFLoss(LWF_TEMPERATURE)

    def loss(x, y, idx):
        y_s, y_t = classifier(x)
        return F.cross_entropy(y_t, y) + LWF_WEIGHT * distillation(y_s, recorded[idx])

    return Run(classifier, loss)


# Each set-up builds the model to train and its loss from the frozen source model; what it computes
# once (attention, relationship, recorded predictions) counts as the method's set-up time.
SETUPS: dict[str, Callable[[TargetTask], Run]] = {
    "finetune": setup_finetune,
    "l2sp": setup_l2sp,
    "delta": setup_delta,
    "bss": setup_bss,
    "stochnorm": setup_stochnorm,
    "co_tuning": setup_co_tuning,
    "lwf": setup_lwf,
    "scratch": setup_scratch,
}
METHODS = tuple(SETUPS)
