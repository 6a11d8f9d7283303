"""End-to-end cost: one fine-tuning step of a ResNet-style CNN, plain versus regularized with
StochNorm + BSS + DELTA (the overhead a user pays for the three together)."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .harness import Case, register


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class SmallResNet(nn.Module):
    """Four stages of conv-BN-ReLU blocks, global pooling, linear head (features returned too)."""

    def __init__(self, width: int = 32, num_classes: int = 10):
        super().__init__()
        self.stem = _block(3, width, 1)
        self.layer1 = _block(width, width, 1)
        self.layer2 = _block(width, 2 * width, 2)
        self.layer3 = _block(2 * width, 4 * width, 2)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        features = F.adaptive_avg_pool2d(self.layer3(self.layer2(self.layer1(self.stem(x)))), 1)
        features = features.flatten(1)
        return self.fc(features), features


def _plain_step(model, optimizer, x, y):
    def step():
        optimizer.zero_grad(set_to_none=True)
        logits, _ = model(x)
        F.cross_entropy(logits, y).backward()
        optimizer.step()
    return step


def _regularized_step(source, x, y):
    from .. import (  # noqa: PLC0415
        AttentionBehavioralRegularization,
        BatchSpectralShrinkage,
        IntermediateLayerGetter,
        convert_model,
    )

    layers = ["layer1", "layer2", "layer3"]
    model = convert_model(copy.deepcopy(source), p=0.5).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    source_getter = IntermediateLayerGetter(source.eval(), layers, keep_output=False)
    target_getter = IntermediateLayerGetter(model, layers)
    channels = [getattr(source, name)[-2].num_features for name in layers]
    delta = AttentionBehavioralRegularization(
        [torch.full((c,), 1.0 / c, device=x.device) for c in channels])
    bss = BatchSpectralShrinkage(k=1)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            source_maps, _ = source_getter(x)
        target_maps, (logits, features) = target_getter(x)
        loss = (F.cross_entropy(logits, y) + 0.01 * delta(source_maps, target_maps)
                + 1e-3 * bss(features))
        loss.backward()
        optimizer.step()
    return step


@register("finetune_step")
def finetune_step_cases(device: torch.device, quick: bool):
    shapes = [(32, 32)] if device.type == "cpu" else [(64, 64), (128, 64)]
    if quick:
        shapes = shapes[:1]
    for batch, size in shapes:
        generator = torch.Generator().manual_seed(0)
        source = SmallResNet().to(device)
        x = torch.randn(batch, 3, size, size, generator=generator).to(device)
        y = torch.randint(0, 10, (batch,), generator=generator).to(device)
        plain = copy.deepcopy(source).train()
        candidates = {
            "plain fine-tuning": _plain_step(
                plain, torch.optim.SGD(plain.parameters(), lr=1e-3, momentum=0.9), x, y),
            "StochNorm+BSS+DELTA": _regularized_step(source, x, y),
        }
        yield Case("finetune_step", f"step {batch}x3x{size}x{size} fp32", candidates,
                   baseline="plain fine-tuning")
