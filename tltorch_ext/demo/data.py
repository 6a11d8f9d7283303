"""Data: TransferData, the built-in digits task, load_data (.npz or an image folder) and
target_split."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._common import IMAGE_SUFFIXES, DemoError


@dataclass
class TransferData:
    """A source task and a target task, images (N, C, H, W) float32 standardized.

    ``shared_classes``: the target task has the source's classes (in another domain), so that a
    method may use the labelled source data beside the target's (DANN). ``augment_source``: the
    source images are digits, which pre-training may augment with :func:`augment`."""

    source_x: torch.Tensor
    source_y: torch.Tensor
    target_x: torch.Tensor
    target_y: torch.Tensor
    source_names: list[str]
    target_names: list[str]
    description: str
    shared_classes: bool = False
    augment_source: bool = False


# The built-in task: which half of the digits the source sees is fixed, so that no target image
# (nor any transformation of it) is ever seen in pre-training.
DIGITS_POOL_SEED = 1234
DIGITS_SIZE = 16
TARGET_NOISE = 0.3
# Of the clean 16×16 digits' ink in [0, 1]; one affine map for both domains, so that the target's
# shift is not normalized away.
DIGITS_MEAN, DIGITS_STD = 0.25, 0.35


def _affine(x: torch.Tensor, generator: torch.Generator, degrees: float, scale: tuple,
            shift: float) -> torch.Tensor:
    """Each image rotated by up to ±degrees, scaled in [scale], shifted by up to ±shift (as a
    fraction of half its side), zero outside."""
    n = len(x)
    angle = (2 * torch.rand(n, generator=generator) - 1) * math.radians(degrees)
    inverse_scale = 1 / torch.empty(n).uniform_(*scale, generator=generator)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = torch.cos(angle) * inverse_scale
    theta[:, 0, 1] = -torch.sin(angle) * inverse_scale
    theta[:, 1, 0] = torch.sin(angle) * inverse_scale
    theta[:, :, 2] = (2 * torch.rand(n, 2, generator=generator) - 1) * shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pre-training augmentation of digit images (ink in [0, 1]): rotation ±15°, scale 0.85–1.15,
    shift ±15 %, and a random stroke width (a third each eroded, kept, dilated by a 3×3 window)."""
    x = _affine(x, generator, degrees=15, scale=(0.85, 1.15), shift=0.15)
    width = torch.randint(0, 3, (len(x), 1, 1, 1), generator=generator)
    thin = -F.max_pool2d(-x, 3, 1, 1)
    thick = F.max_pool2d(x, 3, 1, 1)
    return torch.where(width == 0, thin, torch.where(width == 2, thick, x))


def jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A view of standardized images for self-ensembling: shifted by up to ±1/8 of the side (edges
    repeated) with Gaussian noise of std 0.1."""
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = (2 * torch.rand(len(x), 2, generator=generator) - 1) / 4
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    noise = torch.randn(x.shape, generator=generator).to(x.device)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False) + 0.1 * noise


def standardize_digits(x: torch.Tensor) -> torch.Tensor:
    """Digit images with ink in [0, 1] mapped by the one affine map of both domains."""
    return (x - DIGITS_MEAN) / DIGITS_STD


def digits_task(noise_seed: int = 0) -> TransferData:
    """The built-in task, made from scikit-learn's bundled digits (nothing downloaded).

    The 1,797 digits are upscaled to 16×16 and split in two halves by a fixed seed. Source: the
    first half, clean (pre-training augments it). Target: the second half in another domain, ink
    inverted (dark digits on a light ground) with Gaussian noise of std 0.3 (``noise_seed``); the
    same ten classes. Deterministic: the same ``noise_seed`` gives the same tensors."""
    from sklearn.datasets import load_digits  # noqa: PLC0415

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    x = F.interpolate(x, size=DIGITS_SIZE, mode="bilinear", align_corners=False)
    y = torch.as_tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(DIGITS_POOL_SEED))
    source, target = order[: len(y) // 2], order[len(y) // 2:]
    noise = TARGET_NOISE * torch.randn(
        x[target].shape, generator=torch.Generator().manual_seed(noise_seed))
    names = [str(d) for d in range(10)]
    return TransferData(
        source_x=x[source], source_y=y[source],
        target_x=standardize_digits(1 - x[target] + noise), target_y=y[target],
        source_names=names, target_names=names,
        description="scikit-learn digits at 16x16: clean -> inverted with noise (std 0.3)",
        shared_classes=True, augment_source=True,
    )


def source_images(data: TransferData, generator: torch.Generator | None) -> torch.Tensor:
    """The source images as pre-training sees them: augmented (with ``generator``) when the task
    allows, standardized."""
    if not data.augment_source:
        return data.source_x
    x = data.source_x if generator is None else augment(data.source_x, generator)
    return standardize_digits(x)


def load_data(path: str | os.PathLike | None = None, image_size: int = 16) -> TransferData:
    """The digits (``path`` None), an ``.npz`` file or a folder of class sub-folders of images."""
    if path is None:
        return digits_task()
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
    y = torch.as_tensor(y_index.reshape(-1), dtype=torch.long)
    half = len(names) // 2
    source = y < half
    names = [str(n) for n in names]
    return TransferData(
        source_x=x[source], source_y=y[source], target_x=x[~source], target_y=y[~source] - half,
        source_names=names[:half], target_names=names[half:], description=description,
    )


TEST_FRACTION = 0.4  # of each target class, fixed across seeds
SPLIT_SEED = 0


def target_split(y: torch.Tensor, shots: int, seed: int) -> dict[str, torch.Tensor]:
    """Indices of the target samples: ``test``, 40 % of each class, the same for every seed and
    every shot count; ``train``, ``shots`` samples of each class drawn by ``seed`` from the rest;
    ``val``, the rest without them (any choice is made on it, never on test); ``unlabelled``, train
    and val together with their labels unused (what DANN and self-ensembling adapt to)."""
    fixed = torch.Generator().manual_seed(SPLIT_SEED)
    generator = torch.Generator().manual_seed(seed)
    parts = {"train": [], "val": [], "test": []}
    for label in torch.unique(y).tolist():
        members = torch.nonzero(y == label).flatten()
        members = members[torch.randperm(len(members), generator=fixed)]
        n_test = max(1, round(TEST_FRACTION * len(members)))
        if len(members) - n_test <= shots:
            raise DemoError(
                f"target class index {label} has {len(members)} samples; --shots {shots} needs "
                f"at least {shots + 1} beside the {n_test} it keeps to test")
        rest = members[n_test:]
        rest = rest[torch.randperm(len(rest), generator=generator)]
        parts["test"].append(members[:n_test])
        parts["train"].append(rest[:shots])
        parts["val"].append(rest[shots:])
    split = {name: torch.cat(indices) for name, indices in parts.items()}
    split["unlabelled"] = torch.cat([split["train"], split["val"]])
    return split
