"""Model: SmallCNN, its trainable copies and the cached pre-training of the source model."""
from __future__ import annotations

import copy
import hashlib
import json
import time
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ._common import PRETRAIN_RECIPE
from .data import TransferData


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
