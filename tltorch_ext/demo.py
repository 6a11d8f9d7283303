"""``tltorch-ext demo``: fine-tuning methods compared on a small transfer task.

A small CNN with BatchNorm is pre-trained on a source task (the first half of the classes, every
sample), then fine-tuned on a target task (the second half of the classes, ``--shots`` labelled
samples per class) by each method, over several seeds, and tested on the remaining target samples.
Data: scikit-learn's bundled 8×8 digits (source 0–4, target 5–9; nothing is downloaded), or the
user's ``--data``: an ``.npz`` with arrays ``x`` (N, H, W) or (N, C, H, W) and ``y`` (N,), or a
folder with one sub-folder of images per class (read with Pillow as grayscale, resized to
``--image-size``). Classes are sorted (by label value, or folder name); the first ⌊K/2⌋ are the
source task and the others the target task.

Output: a table on stdout (mean ± std target test accuracy, wall time per run, ms per training step
and the regularizer's overhead per step above plain fine-tuning), and ``results.json``,
``results.csv`` and ``results.png`` in ``--out``. The pre-trained source model is cached in
``--cache-dir`` under a hash of the architecture, the source data and the pre-training settings.
"""
from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import importlib
import json
import os
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ._backend import available_backends

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm"}
LAYERS = ("backbone.block1", "backbone.block2", "backbone.block3")  # DELTA's feature maps

# Loss weights of the regularizers (loss = CE + weight · regularizer): the usual values of the
# methods' papers and reference code, not tuned on this task's test set.
L2SP_WEIGHT = 0.01
DELTA_WEIGHT = 0.01
BSS_WEIGHT = 1e-3
STOCHNORM_P = 0.5
CO_TUNING_WEIGHT = 2.3
LWF_WEIGHT = 1.0
LWF_TEMPERATURE = 2.0
# Source pre-training: SGD over every source sample; part of the cache key.
PRETRAIN_RECIPE = {
    "optimizer": "SGD", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
    "batch_size": 64,
}


class DemoError(ValueError):
    """Bad demo input (data path, data layout, options), reported without a traceback."""


class MethodUnavailable(RuntimeError):
    """A library API a method needs is not importable in this installation."""


# ----------------------------------------------------------------------------------------- data
@dataclass
class TransferData:
    """Images (N, C, H, W) float32, standardized, with class indices split into two tasks."""

    x: torch.Tensor
    y: torch.Tensor
    class_names: list[str]
    source_classes: list[int]
    target_classes: list[int]
    description: str

    def task(self, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples of ``classes``, relabelled 0..len(classes)-1 in that order."""
        relabel = torch.full((len(self.class_names),), -1, dtype=torch.long)
        relabel[torch.tensor(classes)] = torch.arange(len(classes))
        keep = relabel[self.y] >= 0
        return self.x[keep], relabel[self.y[keep]]


def load_data(path: str | os.PathLike | None = None, image_size: int = 16) -> TransferData:
    """The digits (``path`` None), an ``.npz`` file or a folder of class sub-folders of images."""
    if path is None:
        from sklearn.datasets import load_digits  # noqa: PLC0415

        digits = load_digits()
        return _transfer_data(digits.images[:, None], digits.target, "scikit-learn digits (8x8)")
    path = Path(path).expanduser()
    if not path.exists():
        raise DemoError(
            f"--data {str(path)!r} does not exist; give an .npz file or a folder of class folders")
    if path.is_dir():
        return _load_image_folder(path, image_size)
    if path.suffix.lower() == ".npz":
        return _load_npz(path)
    raise DemoError(
        f"--data {str(path)!r} is neither an .npz file nor a folder of class sub-folders")


def _load_npz(path: Path) -> TransferData:
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DemoError(f"--data {str(path)!r} is not a readable .npz file: {error}") from error
    with arrays:
        missing = {"x", "y"} - set(arrays.files)
        if missing:
            raise DemoError(
                f"--data {str(path)!r} lacks the arrays {sorted(missing)}; found {arrays.files}")
        x, y = arrays["x"], arrays["y"]
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DemoError(f"--data: x must be (N, H, W) or (N, C, H, W), got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DemoError(f"--data: y must be (N,) with N = {len(x)} like x, got shape {y.shape}")
    return _transfer_data(x, y, f"{path.name} ({x.shape[1]}x{x.shape[2]}x{x.shape[3]})")


def _load_image_folder(path: Path, image_size: int) -> TransferData:
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    images, labels = [], []
    for class_dir in sorted(p for p in path.iterdir() if p.is_dir()):
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as image:
                    gray = image.convert("L").resize((image_size, image_size), Image.BILINEAR)
            except (OSError, UnidentifiedImageError) as error:
                raise DemoError(f"--data: cannot read image {str(file)!r}: {error}") from error
            images.append(np.asarray(gray, dtype=np.float32)[None])
            labels.append(class_dir.name)
    if not images:
        raise DemoError(f"--data {str(path)!r} holds no class sub-folder with images "
                        f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    description = f"{path.name} (images {image_size}x{image_size})"
    return _transfer_data(np.stack(images), np.array(labels), description)


def _transfer_data(x: np.ndarray, y: np.ndarray, description: str) -> TransferData:
    if not np.issubdtype(x.dtype, np.number):
        raise DemoError(f"--data: x must be numeric, got dtype {x.dtype}")
    if min(x.shape[2:]) < 4:
        raise DemoError(f"--data: images must be at least 4x4, got {x.shape[2]}x{x.shape[3]}")
    names, y_index = np.unique(y, return_inverse=True)
    if len(names) < 2:
        raise DemoError(
            f"--data needs at least 2 classes (one source, one target), found {len(names)}")
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if not torch.isfinite(x).all():
        raise DemoError("--data: x holds NaN or infinite values")
    x = (x - x.mean()) / x.std().clamp_min(1e-6)  # one scalar scale: works for any value range
    half = len(names) // 2
    return TransferData(
        x=x,
        y=torch.as_tensor(y_index.reshape(-1), dtype=torch.long),
        class_names=[str(n) for n in names],
        source_classes=list(range(half)),
        target_classes=list(range(half, len(names))),
        description=description,
    )


def few_shot_split(y: torch.Tensor, shots: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, test indices): ``shots`` random samples of each class to train, the rest
    to test."""
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for label in torch.unique(y).tolist():
        members = torch.nonzero(y == label).flatten()
        if len(members) <= shots:
            raise DemoError(
                f"target class index {label} has {len(members)} samples; --shots {shots} needs "
                f"at least {shots + 1} (one left to test)"
            )
        members = members[torch.randperm(len(members), generator=generator)]
        train.append(members[:shots])
        test.append(members[shots:])
    return torch.cat(train), torch.cat(test)


# ---------------------------------------------------------------------------------------- model
def _conv_block(in_channels: int, out_channels: int, downsample: bool) -> nn.Sequential:
    layers = [nn.MaxPool2d(2)] if downsample else []
    layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
               nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Three conv–BN–ReLU blocks (the 2nd and 3rd after a 2×2 max-pool), global average
    pooling, a linear head. ``backbone`` maps images to (B, 2·width, ⌊H/4⌋, ⌊W/4⌋)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        super().__init__()
        self.backbone = nn.Sequential(OrderedDict(
            block1=_conv_block(in_channels, width, downsample=False),
            block2=_conv_block(width, 2 * width, downsample=True),
            block3=_conv_block(2 * width, 2 * width, downsample=True),
        ))
        self.head = nn.Linear(2 * width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _trainable_copy(module: nn.Module) -> nn.Module:
    """A deep copy with every parameter trainable (the source model itself stays frozen)."""
    module = copy.deepcopy(module)
    for parameter in module.parameters():
        parameter.requires_grad_(True)
    return module


def _with_new_head(source: SmallCNN, num_classes: int) -> SmallCNN:
    model = _trainable_copy(source)
    model.head = nn.Linear(source.head.in_features, num_classes).to(source.head.weight.device)
    return model


def _pretrain_key(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int):
    """Cache key: a hash of the architecture, the pre-training settings and the source data."""
    digest = hashlib.sha256()
    digest.update(repr(model).encode())
    settings = {"seed": seed, "epochs": epochs, "shape": list(x.shape), **PRETRAIN_RECIPE}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(x.numpy().tobytes())
    digest.update(y.numpy().tobytes())
    return digest.hexdigest()[:16]


def pretrain_source(data: TransferData, args, device: torch.device) -> tuple[SmallCNN, str]:
    """The source model, loaded from the cache or trained on every source sample."""
    x, y = data.task(data.source_classes)
    torch.manual_seed(args.pretrain_seed)
    model = SmallCNN(x.shape[1], len(data.source_classes), args.width)
    cache = None
    if not args.no_cache:
        key = _pretrain_key(model, x, y, args.pretrain_seed, args.epochs)
        cache = Path(args.cache_dir).expanduser() / f"source-{key}.pt"
        if cache.exists():
            model.load_state_dict(torch.load(cache, map_location="cpu", weights_only=True))
            return model.to(device).eval(), f"loaded from {cache}"
    model.to(device).train()
    x, y = x.to(device), y.to(device)
    recipe = PRETRAIN_RECIPE
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
                                nesterov=recipe["nesterov"], weight_decay=recipe["weight_decay"])
    batch_size = min(recipe["batch_size"], len(x))
    generator = torch.Generator().manual_seed(args.pretrain_seed)
    start = time.perf_counter()
    epochs = tqdm(range(args.epochs), desc="pre-training", disable=args.quiet, leave=False)
    for _ in epochs:
        order = torch.randperm(len(x), generator=generator).to(device)
        for batch in order.split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    note = f"trained in {time.perf_counter() - start:.1f} s"
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), cache)
        note += f", cached at {cache}"
    return model.eval(), note


# -------------------------------------------------------------------------------------- methods
def _library(*names: str):
    """Library names (dotted below ``tltorch_ext``), or MethodUnavailable naming what is missing."""
    found = []
    for name in names:
        module_name, _, attribute = ("tltorch_ext." + name).rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module_name), attribute))
        except (ImportError, AttributeError) as error:
            raise MethodUnavailable(f"tltorch_ext.{name} is not available ({error})") from error
    return found[0] if len(found) == 1 else found


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
    SPRegularization = _library("SPRegularization")
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
    AttentionReg, compute_attention, LayerGetter = _library(
        "AttentionBehavioralRegularization", "compute_channel_attention", "IntermediateLayerGetter")
    attention = compute_attention(
        _fit_head(task), list(LAYERS), task.loader(), progress=task.progress)
    regularization = AttentionReg(attention)
    model = _with_new_head(task.source, task.num_classes)
    source_maps = LayerGetter(task.source, list(LAYERS), keep_output=False)
    target_maps = LayerGetter(model, list(LAYERS))

    def loss(x, y):
        with torch.no_grad():
            reference, _ = source_maps(x)  # the source model stays in eval mode
        maps, logits = target_maps(x)
        return F.cross_entropy(logits, y) + DELTA_WEIGHT * regularization(reference, maps)

    return _single_head_run(model, loss)


def setup_bss(task: TargetTask) -> Run:
    """BSS: loss = CE + w · (smallest singular value of the batch's pooled features)²."""
    BatchSpectralShrinkage = _library("BatchSpectralShrinkage")
    model = _with_new_head(task.source, task.num_classes)
    shrinkage = BatchSpectralShrinkage(k=1)

    def loss(x, y):
        features = model.features(x)
        return F.cross_entropy(model.head(features), y) + BSS_WEIGHT * shrinkage(features)

    return _single_head_run(model, loss)


def setup_stochnorm(task: TargetTask) -> Run:
    """StochNorm: every BatchNorm replaced by StochNorm (p = 0.5); loss = CE."""
    convert_model = _library("convert_model")
    model = convert_model(_with_new_head(task.source, task.num_classes), STOCHNORM_P)
    return _single_head_run(model)


def _two_head_classifier(task: TargetTask, module: str):
    Classifier = _library(f"finetune.{module}.Classifier")
    source = _trainable_copy(task.source)
    return Classifier(source.backbone, task.num_classes, head_source=source.head).to(task.device)


def setup_co_tuning(task: TargetTask) -> Run:
    """Co-Tuning: loss = CE(y_t) + w · CE(y_s, p(y_s | y_t)), the relationship learned once from
    the source head's predictions on the target training set."""
    CoTuningLoss, Relationship = _library(
        "finetune.co_tuning.CoTuningLoss", "finetune.co_tuning.Relationship")
    classifier = _two_head_classifier(task, "co_tuning")
    relationship = Relationship(task.loader(), classifier, task.device, progress=task.progress)
    co_tuning_loss = CoTuningLoss()

    def loss(x, y, idx):
        y_s, y_t = classifier(x)
        return F.cross_entropy(y_t, y) + CO_TUNING_WEIGHT * co_tuning_loss(y_s, relationship[y])

    return Run(classifier, loss)


def setup_lwf(task: TargetTask) -> Run:
    """LwF: loss = CE(y_t) + w · T²·KL(recorded source-head predictions ‖ current ones)."""
    LwFLoss, collect_pretrain_labels = _library(
        "finetune.lwf.LwFLoss", "finetune.lwf.collect_pretrain_labels")
    classifier = _two_head_classifier(task, "lwf")
    recorded = collect_pretrain_labels(
        task.loader(), classifier, task.device, progress=task.progress).to(task.device)
    distillation = LwFLoss(LWF_TEMPERATURE)

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


# ------------------------------------------------------------------------------------- training
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of the samples whose largest logit is at their label (the model in eval mode)."""
    model.eval()
    batches = zip(x.split(batch_size), y.split(batch_size))
    correct = sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in batches)
    return correct / len(y)


def run_method(method: str, task: TargetTask, test: tuple[torch.Tensor, torch.Tensor], args,
               seed: int) -> dict:
    """Set up ``method``, train it ``args.steps`` steps of SGD with momentum, test it.

    Returns the test accuracy, the run's wall time, its set-up part (attention, relationship,
    recorded predictions) and the median cost of a training step."""
    torch.manual_seed(seed)
    _synchronize(task.device)
    start = time.perf_counter()
    run = SETUPS[method](task)
    optimizer = torch.optim.SGD(run.model.parameters(), lr=args.lr, momentum=0.9, nesterov=True)
    batch_size = min(args.batch_size, len(task.y))
    generator = torch.Generator().manual_seed(seed)
    _synchronize(task.device)
    train_start = time.perf_counter()
    run.model.train()
    # Step cost: on CPU the calling thread's CPU time (all of the step's work with --threads 1),
    # which other processes sharing the cores barely disturb; on CUDA the wall time up to the
    # kernels' completion.
    step_clock = time.thread_time if task.device.type == "cpu" else time.perf_counter
    step_seconds = []
    for _ in tqdm(range(args.steps), desc=f"{method} seed {seed}", disable=args.quiet, leave=False):
        step_start = step_clock()
        idx = torch.randperm(len(task.y), generator=generator)[:batch_size].to(task.device)
        optimizer.zero_grad(set_to_none=True)
        run.loss(task.x[idx], task.y[idx], idx).backward()
        optimizer.step()
        _synchronize(task.device)
        step_seconds.append(step_clock() - step_start)
    end = time.perf_counter()
    return {
        "accuracy": accuracy(run.model, *test),
        "seconds": end - start,
        "setup_seconds": train_start - start,
        "ms_per_step": 1e3 * statistics.median(step_seconds),
    }


def _summary(method: str, runs: list[dict], seeds: list[int]) -> dict:
    def mean_std(key):
        values = [r[key] for r in runs]
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    acc_mean, acc_std = mean_std("accuracy")
    return {
        "method": method,
        "accuracy_mean": acc_mean,
        "accuracy_std": acc_std,
        "seconds_mean": mean_std("seconds")[0],
        "setup_seconds_mean": mean_std("setup_seconds")[0],
        "ms_per_step": mean_std("ms_per_step")[0],
        "overhead_ms_per_step": None,
        "runs": [{"seed": s, **r} for s, r in zip(seeds, runs)],
    }


# --------------------------------------------------------------------------------------- output
def format_table(summaries: list[dict]) -> str:
    header = (f"{'method':<10} {'target acc (mean ± std)':>24} {'time/run s':>11} "
              f"{'set-up s':>9} {'ms/step':>8} {'overhead ms/step':>17}")
    lines = [header, "-" * len(header)]
    for s in summaries:
        overhead = s["overhead_ms_per_step"]
        overhead = "n/a" if overhead is None else f"{overhead:+.2f}"
        lines.append(
            f"{s['method']:<10} {100 * s['accuracy_mean']:>15.1f} ± "
            f"{100 * s['accuracy_std']:4.1f} % "
            f"{s['seconds_mean']:>11.2f} {s['setup_seconds_mean']:>9.2f} {s['ms_per_step']:>8.2f} "
            f"{overhead:>17}"
        )
    return "\n".join(lines)


def write_outputs(summaries: list[dict], meta: dict, out: Path) -> list[Path]:
    """results.json (everything), results.csv (one row per method) and results.png (bar charts)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.csv", out / "results.png"]
    paths[0].write_text(json.dumps({**meta, "results": summaries}, indent=1) + "\n")
    columns = ["method", "accuracy_mean", "accuracy_std", "seconds_mean", "setup_seconds_mean",
               "ms_per_step", "overhead_ms_per_step"]
    with paths[1].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summaries)
    _plot(summaries, meta, paths[2])
    return paths


def _plot(summaries: list[dict], meta: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = [s["method"] for s in summaries]
    positions = np.arange(len(names))
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    bars = left.bar(positions, [100 * s["accuracy_mean"] for s in summaries],
                    yerr=[100 * s["accuracy_std"] for s in summaries], capsize=4, color="tab:blue")
    left.bar_label(bars, fmt="%.1f", label_type="center", color="white")
    left.set_ylim(bottom=100 * meta["chance_accuracy"])
    left.set_ylabel("target test accuracy (%) (axis from chance)")
    left.set_title(f"{meta['shots']} shots per class, {len(meta['seeds'])} seeds (mean ± std)")
    bars = right.bar(positions, [s["ms_per_step"] for s in summaries], color="tab:orange")
    right.bar_label(bars, fmt="%.2f")
    right.set_ylabel("ms per training step")
    right.set_title(f"training cost ({meta['device']})")
    for axis in (left, right):
        axis.set_xticks(positions, names, rotation=30, ha="right")
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(f"fine-tuning on {meta['data']}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ------------------------------------------------------------------------------------------ CLI
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options, added to ``parser``."""
    parser.add_argument("--data", default=None, metavar="PATH",
                        help="an .npz (arrays x (N,H,W) or (N,C,H,W), y (N,)) or a folder of "
                             "class sub-folders of images; the first half of the sorted classes is "
                             "the source task, the rest the target task (default: scikit-learn's "
                             "digits, 0-4 -> 5-9)")
    parser.add_argument("--image-size", type=_positive_int, default=16,
                        help="side to which folder images are resized (grayscale); default 16")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        metavar="METHOD",
                        help=f"methods to compare, among {', '.join(METHODS)} (default: all)")
    parser.add_argument("--shots", type=_positive_int, default=10,
                        help="labelled training samples per target class (default 10)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds of the target split and of fine-tuning (default 0 1 2)")
    parser.add_argument("--steps", type=_positive_int, default=200,
                        help="fine-tuning steps per run (default 200)")
    parser.add_argument("--epochs", type=_positive_int, default=10,
                        help="source pre-training epochs (default 10)")
    parser.add_argument("--lr", type=_positive_float, default=0.05,
                        help="fine-tuning learning rate of SGD, every layer (default 0.05)")
    parser.add_argument("--batch-size", type=_positive_int, default=32)
    parser.add_argument("--width", type=_positive_int, default=32,
                        help="channels of the first conv block (default 32)")
    parser.add_argument("--pretrain-seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=_positive_int, default=1,
                        help="CPU threads of torch (default 1: the demo's tensors are too small to "
                             "gain from more, and one thread makes ms/step a clean CPU-time measure)")
    parser.add_argument("--out", default="demo_out", help="folder for results.json/.csv/.png")
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache"))
    parser.add_argument("--cache-dir", default=str(cache_home / "tltorch_ext"),
                        help="where the pre-trained source model is cached")
    parser.add_argument("--no-cache", action="store_true", help="pre-train again, write no cache")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or notes")


def run_demo(args: argparse.Namespace) -> int:
    """Run the comparison; returns the process exit status (2 on bad input)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    except DemoError as error:
        print(f"tltorch-ext demo: error: {error}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)


def _note(args, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _run(args) -> int:
    total_start = time.perf_counter()
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise DemoError(f"--device {args.device!r} is not a torch device ({error})") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DemoError("--device cuda asked for, but torch sees no CUDA device")
    seeds = list(dict.fromkeys(args.seeds))
    data = load_data(args.data, args.image_size)
    source_x, source_y = data.task(data.source_classes)
    target_x, target_y = data.task(data.target_classes)
    names = [[data.class_names[c] for c in classes]
             for classes in (data.source_classes, data.target_classes)]
    _note(args, f"data: {data.description}; source classes {names[0]} ({len(source_x)} samples), "
                f"target classes {names[1]} ({len(target_x)} samples, {args.shots} per class "
                "to train, the rest to test)")
    splits = {seed: few_shot_split(target_y, args.shots, seed) for seed in seeds}  # before training
    source, note = pretrain_source(data, args, device)
    source_accuracy = accuracy(source, source_x.to(device), source_y.to(device))
    _note(args, f"source model: {note}; source train accuracy {100 * source_accuracy:.1f} %")
    for parameter in source.parameters():
        parameter.requires_grad_(False)

    # The first optimizer built imports torch._dynamo (about a second): no method's cost.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    summaries, unavailable = [], {}
    for method in tqdm(list(dict.fromkeys(args.methods)), desc="methods", disable=args.quiet):
        runs = []
        try:
            for seed in seeds:
                train, test = splits[seed]
                task = TargetTask(source, target_x[train].to(device), target_y[train].to(device),
                                  len(data.target_classes), device, progress=not args.quiet)
                test_set = (target_x[test].to(device), target_y[test].to(device))
                runs.append(run_method(method, task, test_set, args, seed))
        except MethodUnavailable as reason:
            unavailable[method] = str(reason)
            print(f"method {method} unavailable: {reason}", file=sys.stderr, flush=True)
            continue
        summaries.append(_summary(method, runs, seeds))

    baseline = next((s for s in summaries if s["method"] == "finetune"), None)
    if baseline is not None:
        for s in summaries:
            s["overhead_ms_per_step"] = s["ms_per_step"] - baseline["ms_per_step"]
    total = time.perf_counter() - total_start
    meta = {
        "data": data.description, "source_classes": names[0], "target_classes": names[1],
        "device": str(device), "shots": args.shots, "seeds": seeds, "steps": args.steps,
        "pretrain_epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(), "backends": available_backends(device),
        "chance_accuracy": 1 / len(data.target_classes), "source_train_accuracy": source_accuracy,
        "unavailable": unavailable, "total_seconds": total,
    }
    if summaries:
        print(format_table(summaries))
    for method, reason in unavailable.items():
        print(f"skipped {method}: {reason}")
    if not summaries:
        print("no method could run: nothing written")
        return 1
    paths = write_outputs(summaries, meta, Path(args.out))
    print(f"total {total:.1f} s; wrote {', '.join(str(p) for p in paths)}")
    return 0
