"""Models (SmallCNN, ResNet-18/50), their trainable copies and the cached pre-training of the source
model."""
from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ._common import PRETRAIN_RECIPE, DemoError
from .data import TransferData, source_images


def _conv_block(in_channels: int, out_channels: int, downsample: bool) -> nn.Sequential:
    layers = [nn.MaxPool2d(2)] if downsample else []
    layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
               nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    """``backbone`` (images → feature maps), global average pooling, a linear ``head``.
    ``feature_layers`` names the backbone's stages whose maps DELTA compares."""

    feature_layers: tuple[str, ...]

    def __init__(self, backbone: nn.Module, features_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(features_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallCNN(Classifier):
    """Three conv–BN–ReLU blocks (the 2nd and 3rd after a 2×2 max-pool), global average
    pooling, a linear head. ``backbone`` maps images to (B, 2·width, ⌊H/4⌋, ⌊W/4⌋)."""

    feature_layers = ("backbone.block1", "backbone.block2", "backbone.block3")

    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        backbone = nn.Sequential(OrderedDict(
            block1=_conv_block(in_channels, width, downsample=False),
            block2=_conv_block(width, 2 * width, downsample=True),
            block3=_conv_block(2 * width, 2 * width, downsample=True),
        ))
        super().__init__(backbone, 2 * width, num_classes)
        self.width = width


class _Residual(nn.Module):
    """A ResNet block: basic (two 3×3 convs) or bottleneck (1×1, 3×3 with the stride, 1×1 to
    4× the width, as torchvision's v1.5), with a 1×1 conv–BN projection when the shape changes."""

    def __init__(self, in_channels: int, width: int, stride: int, bottleneck: bool):
        super().__init__()
        out_channels = 4 * width if bottleneck else width
        if bottleneck:
            shapes = [(in_channels, width, 1, 1), (width, width, 3, stride),
                      (width, out_channels, 1, 1)]
        else:
            shapes = [(in_channels, width, 3, stride), (width, width, 3, 1)]
        for i, (c_in, c_out, k, s) in enumerate(shapes, 1):
            setattr(self, f"conv{i}", nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(c_out))
        self.depth = len(shapes)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride,
                                                      bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i in range(1, self.depth + 1):
            out = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(out))
            if i < self.depth:
                out = F.relu(out)
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


RESNETS = {"resnet18": ((2, 2, 2, 2), False), "resnet50": ((3, 4, 6, 3), True)}


class ResNet(Classifier):
    """ResNet-18 or -50 with torchvision's parameter names under ``backbone`` (``conv1``, ``bn1``,
    ``layer1.0.conv1`` …), so that a torchvision state dict loads with :func:`load_weights`;
    written here because torchvision's wheels pin a torch of their own."""

    feature_layers = ("backbone.layer2", "backbone.layer3", "backbone.layer4")

    def __init__(self, name: str, in_channels: int, num_classes: int):
        blocks, bottleneck = RESNETS[name]
        stages, channels = OrderedDict(), 64
        for i, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512)), 1):
            layer = []
            for j in range(count):
                layer.append(_Residual(channels, width, 2 if i > 1 and j == 0 else 1, bottleneck))
                channels = 4 * width if bottleneck else width
            stages[f"layer{i}"] = nn.Sequential(*layer)
        backbone = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), bn1=nn.BatchNorm2d(64),
            relu=nn.ReLU(inplace=True), maxpool=nn.MaxPool2d(3, 2, 1), **stages))
        super().__init__(backbone, channels, num_classes)
        self.name = name


def build_model(args, in_channels: int, num_classes: int) -> Classifier:
    """The ``--model`` architecture (``cnn`` is SmallCNN of ``--width``)."""
    if args.model == "cnn":
        return SmallCNN(in_channels, num_classes, args.width)
    return ResNet(args.model, in_channels, num_classes)


def load_weights(model: Classifier, path) -> None:
    """Load a checkpoint of this architecture: the demo's own, or a torchvision ResNet state dict
    (keys without ``backbone.``; its ``fc`` head is dropped, and an RGB first conv is summed over
    its colour channels for grayscale images, which is the same as feeding the gray image three
    times)."""
    try:
        state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as error:
        raise DemoError(f"--weights {str(path)!r} is not a readable torch checkpoint: {error}") \
            from error
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise DemoError(f"--weights {str(path)!r} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not any(k.startswith("backbone.") for k in state):
        state = {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    conv = state.get("backbone.conv1.weight")
    expected = model.state_dict().get("backbone.conv1.weight")
    if conv is not None and expected is not None and conv.shape[1] == 3 and expected.shape[1] == 1:
        state["backbone.conv1.weight"] = conv.sum(dim=1, keepdim=True)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise DemoError(f"--weights {str(path)!r} does not fit --model: missing "
                        f"{missing[:3]}{'…' if len(missing) > 3 else ''}, unexpected "
                        f"{unexpected[:3]}{'…' if len(unexpected) > 3 else ''}")


def _trainable_copy(module: nn.Module) -> nn.Module:
    """A deep copy with every parameter trainable (the source model itself stays frozen)."""
    module = copy.deepcopy(module)
    for parameter in module.parameters():
        parameter.requires_grad_(True)
    return module


def _with_new_head(source: Classifier, num_classes: int) -> Classifier:
    model = _trainable_copy(source)
    model.head = nn.Linear(source.head.in_features, num_classes).to(source.head.weight.device)
    return model


def _pretrain_key(model: nn.Module, data: TransferData, seed: int, epochs: int) -> str:
    """Cache key: a hash of the architecture, its initial weights, the pre-training settings and
    the source data."""
    digest = hashlib.sha256()
    digest.update(repr(model).encode())
    for tensor in model.state_dict().values():
        digest.update(tensor.cpu().numpy().tobytes())
    settings = {"seed": seed, "epochs": epochs, "shape": list(data.source_x.shape),
                "augment": data.augment_source, **PRETRAIN_RECIPE}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(data.source_x.numpy().tobytes())
    digest.update(data.source_y.numpy().tobytes())
    return digest.hexdigest()[:16]


def pretrain_source(data: TransferData, args, device: torch.device,
                    cached_only: bool = False) -> tuple[Classifier | None, str]:
    """The source model, loaded from the cache or trained on every source sample (freshly
    augmented each epoch where the task allows) by one-cycle SGD, from ``--weights`` when given.
    ``cached_only``: (None, "") instead of training when the cache does not hold it."""
    torch.manual_seed(args.pretrain_seed)
    model = build_model(args, data.source_x.shape[1], len(data.source_names))
    if args.weights is not None:
        load_weights(model, args.weights)
    cache = None
    if not args.no_cache:
        key = _pretrain_key(model, data, args.pretrain_seed, args.epochs)
        cache = Path(args.cache_dir).expanduser() / f"source-{key}.pt"
        if cache.exists():
            model.load_state_dict(torch.load(cache, map_location="cpu", weights_only=True))
            return model.to(device).eval(), f"loaded from {cache}"
    if cached_only:
        return None, ""
    model.to(device).train()
    y = data.source_y.to(device)
    recipe = PRETRAIN_RECIPE
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
                                nesterov=recipe["nesterov"], weight_decay=recipe["weight_decay"])
    batch_size = min(recipe["batch_size"], len(y))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, recipe["lr"], total_steps=args.epochs * math.ceil(len(y) / batch_size))
    generator = torch.Generator().manual_seed(args.pretrain_seed)
    start = time.perf_counter()
    epochs = tqdm(range(args.epochs), desc="pre-training", disable=args.quiet, leave=False)
    for _ in epochs:
        x = source_images(data, generator).to(device)
        order = torch.randperm(len(y), generator=generator).to(device)
        for batch in order.split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
            schedule.step()
    note = f"trained in {time.perf_counter() - start:.1f} s"
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), cache)
        note += f", cached at {cache}"
    return model.eval(), note
