"""Methods: TargetTask, Run and one set-up per method (SETUPS, METHODS): fine-tuning, its
regularizers, domain adaptation and training from scratch."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import (
    AttentionBehavioralRegularization,
    BatchSpectralShrinkage,
    DomainAdversarialLoss,
    DomainDiscriminator,
    EmaTeacher,
    IntermediateLayerGetter,
    L2ConsistencyLoss,
    MinimumClassConfusionLoss,
    SPRegularization,
    WarmStartGradientReverseLayer,
    compute_channel_attention,
    confidence_mask,
    convert_model,
)
from ..finetune import co_tuning, lwf
from ._common import (
    BSS_WEIGHT,
    CO_TUNING_WEIGHT,
    CONFIDENCE_THRESHOLD,
    CONSISTENCY_WEIGHT,
    DANN_WEIGHT,
    DELTA_WEIGHT,
    EMA_ALPHA,
    L2SP_WEIGHT,
    LWF_TEMPERATURE,
    LWF_WEIGHT,
    MCC_TEMPERATURE,
    MCC_WEIGHT,
    STOCHNORM_P,
)
from .data import jitter
from .model import Classifier, _trainable_copy, _with_new_head


@dataclass
class TargetTask:
    """What every method sees: the source model, the few labelled target samples, the unlabelled
    target samples and, where the classes are shared, the labelled source samples."""

    source: Classifier
    fresh: Callable[[], Classifier]  # a newly initialized model of the same shape, on device
    x: torch.Tensor  # (n, C, H, W) on device
    y: torch.Tensor  # (n,) on device
    unlabelled: torch.Tensor  # (u, C, H, W) target images, labels unused
    source_x: torch.Tensor | None  # labelled source samples when the classes are shared
    source_y: torch.Tensor | None
    num_classes: int
    steps: int
    batch_size: int
    seed: int
    device: torch.device
    progress: bool

    def loader(self, batch_size: int = 64) -> torch.utils.data.DataLoader:
        """Unshuffled (x, y) batches, for the library's data-driven set-up steps."""
        dataset = torch.utils.data.TensorDataset(self.x, self.y)
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)

    def sampler(self, *tensors: torch.Tensor) -> Callable[[], tuple[torch.Tensor, ...]]:
        """Draws a random batch (``batch_size``) of the same rows of ``tensors`` per call, from a
        generator of its own seeded by the run's seed."""
        generator = torch.Generator().manual_seed(self.seed + 1)

        def draw():
            idx = torch.randint(len(tensors[0]), (self.batch_size,), generator=generator)
            return tuple(t[idx.to(t.device)] for t in tensors)

        return draw


@dataclass
class Run:
    """A method ready to train: ``loss(x, y, idx)`` on a batch (idx: indices into the train set)."""

    model: nn.Module  # every parameter trains at --lr
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    extra_parameters: tuple[nn.Parameter, ...] = ()  # trained beside the model's (a discriminator)
    after_step: Callable[[], None] | None = None
    evaluated: nn.Module | None = None  # tested instead of ``model`` (eval mode → target logits)


def _single_head_run(model: Classifier, loss=None) -> Run:
    """A run of a Classifier whose loss, ``loss(x, y)``, is the cross-entropy unless given."""
    loss = loss or (lambda x, y: F.cross_entropy(model(x), y))
    return Run(model, lambda x, y, idx: loss(x, y))


def setup_finetune(task: TargetTask) -> Run:
    """Source model with a new head; loss = CE."""
    return _single_head_run(_with_new_head(task.source, task.num_classes))


def setup_scratch(task: TargetTask) -> Run:
    """A freshly initialized network of the same shape; loss = CE."""
    return _single_head_run(task.fresh())


def setup_l2sp(task: TargetTask) -> Run:
    """L2-SP: loss = CE + w · ½ Σ ‖θ − θ⁰‖² over the parameters shared with the source."""
    model = _with_new_head(task.source, task.num_classes)
    regularization = SPRegularization(task.source, model)
    return _single_head_run(
        model, lambda x, y: F.cross_entropy(model(x), y) + L2SP_WEIGHT * regularization())


def _fit_head(task: TargetTask, steps: int = 100) -> Classifier:
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
    maps of the model's ``feature_layers`` (channel attention measured once on the target training
    set)."""
    layers = list(task.source.feature_layers)
    attention = compute_channel_attention(
        _fit_head(task), layers, task.loader(), progress=task.progress)
    regularization = AttentionBehavioralRegularization(attention)
    model = _with_new_head(task.source, task.num_classes)
    source_maps = IntermediateLayerGetter(task.source, layers, keep_output=False)
    target_maps = IntermediateLayerGetter(model, layers)

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


def setup_dann(task: TargetTask) -> Run:
    """DANN: loss = CE(target batch) + CE(source batch) + w · domain-adversarial loss between the
    source batch's and an unlabelled target batch's features (a discriminator behind a warm-start
    gradient reversal over the run). Needs the source's classes on the target."""
    model = _with_new_head(task.source, task.num_classes)
    discriminator = DomainDiscriminator(task.source.head.in_features, 256).to(task.device)
    grl = WarmStartGradientReverseLayer(max_iters=task.steps, auto_step=True)
    domain_loss = DomainAdversarialLoss(discriminator, grl=grl)
    source_batch = task.sampler(task.source_x, task.source_y)
    target_batch = task.sampler(task.unlabelled)

    def loss(x, y, idx):
        (x_s, y_s), (x_u,) = source_batch(), target_batch()
        logits, features = _logits_and_features(model, torch.cat([x, x_s, x_u]))
        n, m = len(x), len(x_s)
        classification = F.cross_entropy(logits[:n], y) + F.cross_entropy(logits[n:n + m], y_s)
        return classification + DANN_WEIGHT * domain_loss(features[n:n + m], features[n + m:])

    return Run(model, loss, extra_parameters=tuple(discriminator.parameters()))


def _logits_and_features(model: Classifier, x: torch.Tensor):
    features = model.features(x)
    return model.head(features), features


def setup_mcc(task: TargetTask) -> Run:
    """MCC: loss = CE(target batch) + w · minimum-class-confusion loss of the predictions on an
    unlabelled target batch (temperature 2.5); no source data, no discriminator."""
    model = _with_new_head(task.source, task.num_classes)
    confusion = MinimumClassConfusionLoss(MCC_TEMPERATURE)
    target_batch = task.sampler(task.unlabelled)

    def loss(x, y):
        (x_u,) = target_batch()
        logits = model(torch.cat([x, x_u]))  # one pass: BatchNorm sees both batches together
        return F.cross_entropy(logits[:len(x)], y) + MCC_WEIGHT * confusion(logits[len(x):])

    return _single_head_run(model, loss)


def setup_self_ensemble(task: TargetTask) -> Run:
    """Self-ensembling (mean teacher): loss = CE(target batch) + w · squared distance between the
    student's and the EMA teacher's class probabilities on two jittered views of an unlabelled
    target batch, where the teacher is confident; the teacher is tested."""
    model = _with_new_head(task.source, task.num_classes)
    teacher = EmaTeacher(model, EMA_ALPHA)
    consistency = L2ConsistencyLoss()
    target_batch = task.sampler(task.unlabelled)
    generator = torch.Generator().manual_seed(task.seed + 2)

    def loss(x, y, idx):
        (x_u,) = target_batch()
        student_view, teacher_view = jitter(x_u, generator), jitter(x_u, generator)
        logits = model(torch.cat([x, student_view]))
        with torch.no_grad():
            teacher_probs = teacher(teacher_view).softmax(dim=1)
        mask = confidence_mask(teacher_probs, CONFIDENCE_THRESHOLD)
        student_probs = logits[len(x):].softmax(dim=1)
        return F.cross_entropy(logits[:len(x)], y) + CONSISTENCY_WEIGHT * consistency(
            student_probs, teacher_probs, mask)

    return Run(model, loss, after_step=teacher.update, evaluated=teacher)


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
    "dann": setup_dann,
    "self_ensemble": setup_self_ensemble,
    "mcc": setup_mcc,
    "scratch": setup_scratch,
}
METHODS = tuple(SETUPS)
NEEDS_SHARED_CLASSES = {"dann"}
