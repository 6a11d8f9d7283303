"""Data: TransferData, load_data (digits, .npz or an image folder) and few_shot_split."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._common import IMAGE_SUFFIXES, DemoError


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
