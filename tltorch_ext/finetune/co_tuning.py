"""Co-Tuning: supervise the source head with the target labels translated into source classes.

The category relationship p(y_s | y_t) (N_t × N_p) is learned once from the pre-trained source
head's outputs on the target training data (:class:`Relationship`); during fine-tuning the source
head of ``Classifier`` is trained towards ``relationship[labels]`` with :class:`CoTuningLoss`.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._common import accumulation_dtype, model_device
from .lwf import Classifier, check_logit_pair, source_logits

__all__ = ["Classifier", "CoTuningLoss", "Relationship"]


class CoTuningLoss(nn.Module):
    """Cross-entropy against soft source-class targets.

    forward(input (b, N_p) source-head logits, target (b, N_p) rows p(y_s | y_t)) →
    (1/b) Σ_b −Σ_k target_bk · log_softmax(input_b)_k. Computed in float32 for half inputs.
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_logit_pair(input, target)
        dtype = accumulation_dtype(input.dtype)
        log_probabilities = F.log_softmax(input.to(dtype), dim=1)
        return -(target.detach().to(dtype) * log_probabilities).sum(1).mean()


class Relationship:
    """The category relationship p(y_s | y_t) between target and source classes (N_t × N_p).

    It is learned from p_n = softmax(source-head logits) on the target training samples
    (``classifier`` is a :class:`Classifier`, whose source head is used, or a module that outputs
    the source logits; it runs in eval mode without gradients on ``device``):

    - ``method='direct'``: row y_t is the mean of p_n over the samples of class y_t.
    - ``method='reverse'``: a multinomial logistic regression p(y_t | p) = softmax(W p) is fitted
      on the pairs (p_n, y_n) by L-BFGS in float64 (mean cross-entropy + ``l2``/2 · ‖W‖²), its
      temperature t is calibrated by the negative log-likelihood of softmax(W p / t) on the same
      pairs (undoing the penalty's shrinkage), and Bayes' rule inverts it:
      p(y_s = j | y_t) ∝ p(y_t | y_s = j) · π_j with p(y_t | y_s = j) = softmax(W e_j / t) and the
      source-class prior π = mean_n p_n.

    The number of target classes is ``classifier.num_classes`` for a :class:`Classifier`, else the
    largest label + 1; a class without samples is an error. With ``cache`` (a file path), the
    table is loaded from it when the file exists, otherwise computed and saved there (NumPy
    ``.npy`` when the name ends so, else ``torch.save``). ``relationship[y_t]`` gives rows: for a
    tensor index, a float32 tensor on that index's device.
    """

    def __init__(
        self,
        data_loader: Iterable,
        classifier: nn.Module,
        device=None,
        cache: str | os.PathLike | None = None,
        method: str = "direct",
        l2: float = 1e-4,
        progress: bool = True,
    ):
        if method not in ("direct", "reverse"):
            raise ValueError(f"method must be 'direct' or 'reverse', got {method!r}")
        if not isinstance(l2, (int, float)) or l2 < 0:
            raise ValueError(f"l2 must be a non-negative number, got {l2!r}")
        self.method = method
        if cache is not None and os.path.exists(cache):
            self.relationship = _load(cache)
        else:
            self.relationship = self._learn(
                data_loader, classifier, device, method, float(l2), progress
            )
            if cache is not None:
                _save(cache, self.relationship)
        self._on_device = {self.relationship.device: self.relationship}

    @staticmethod
    def _learn(data_loader, classifier, device, method, l2, progress) -> torch.Tensor:
        logits, labels = source_logits(
            classifier, data_loader, device, progress, "collecting source predictions"
        )
        if labels is None:
            raise ValueError("data_loader must yield (inputs, target labels)")
        labels = labels.long()
        if isinstance(classifier, Classifier):
            num_classes = classifier.num_classes
        else:
            num_classes = int(labels.max()) + 1
        if labels.dim() != 1 or labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"target labels must be class indices in [0, {num_classes}), one per sample"
            )
        counts = torch.bincount(labels, minlength=num_classes)
        empty = torch.nonzero(counts == 0).flatten().tolist()
        if empty:
            raise ValueError(
                f"target classes {empty} have no sample in data_loader: p(y_s | y_t) is undefined"
            )
        fit_device = model_device(classifier) if device is None else torch.device(device)
        fit_dtype = torch.float32 if fit_device.type == "mps" else torch.float64  # MPS: no float64
        probabilities = torch.softmax(logits.to(fit_device, fit_dtype), dim=1)
        labels = labels.to(fit_device)
        if method == "direct":
            table = _class_means(probabilities, labels, num_classes)
        else:
            table = _reverse_relationship(probabilities, labels, num_classes, l2)
        return table.float().cpu()

    def __getitem__(self, category):
        if isinstance(category, torch.Tensor):
            device = category.device
            if device not in self._on_device:
                self._on_device[device] = self.relationship.to(device)
            return self._on_device[device][category.long()]
        return self.relationship[torch.as_tensor(np.asarray(category), dtype=torch.long)]

    def __len__(self) -> int:
        return self.relationship.shape[0]


def _class_means(probabilities, labels, num_classes: int) -> torch.Tensor:
    sums = probabilities.new_zeros(num_classes, probabilities.shape[1])
    sums.index_add_(0, labels, probabilities)
    return sums / torch.bincount(labels, minlength=num_classes).unsqueeze(1)


def _minimize(objective, variable: torch.Tensor) -> None:
    optimizer = torch.optim.LBFGS(
        [variable], lr=1.0, max_iter=500, history_size=20, tolerance_grad=1e-9,
        tolerance_change=1e-12, line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimizer.step(closure)


def _reverse_relationship(probabilities, labels, num_classes: int, l2: float) -> torch.Tensor:
    """Bayes inversion of a temperature-calibrated linear classifier p(y_t | p_s)."""
    num_source = probabilities.shape[1]
    with torch.enable_grad():
        weight = probabilities.new_zeros(num_classes, num_source, requires_grad=True)
        _minimize(
            lambda: F.cross_entropy(probabilities @ weight.T, labels)
            + 0.5 * l2 * weight.square().sum(),
            weight,
        )
        weight = weight.detach()
        log_temperature = probabilities.new_zeros((), requires_grad=True)
        _minimize(
            lambda: F.cross_entropy(probabilities @ weight.T / log_temperature.exp(), labels),
            log_temperature,
        )
    # column j of W is the classifier's logit vector for the one-hot source prediction e_j
    target_given_source = torch.softmax(weight.T / log_temperature.detach().exp(), dim=1)
    joint = target_given_source * probabilities.mean(0).unsqueeze(1)
    return (joint / joint.sum(0, keepdim=True).clamp_min(torch.finfo(joint.dtype).tiny)).T


def _save(path, table: torch.Tensor) -> None:
    if str(path).endswith(".npy"):
        with open(path, "wb") as file:  # np.save(path) would append a second '.npy' to some names
            np.save(file, table.numpy())
    else:
        torch.save(table, path)


def _load(path) -> torch.Tensor:
    if str(path).endswith(".npy"):
        table = torch.from_numpy(np.load(path)).float()
    else:
        table = torch.load(path, weights_only=True)
    if not isinstance(table, torch.Tensor) or table.dim() != 2:
        raise ValueError(
            f"cache {os.fspath(path)!r} does not hold an (N_t, N_p) relationship table"
        )
    row_sums = table.double().sum(1)
    if not torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-3):
        raise ValueError(f"cache {os.fspath(path)!r}: rows of p(y_s | y_t) must sum to 1")
    return table.float()
