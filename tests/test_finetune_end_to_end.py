"""Issue 5's end-to-end check: L2-SP + DELTA + BSS + StochNorm together fine-tune a small CNN."""
import copy

import torch
import torch.nn.functional as F
from torch import nn

import tltorch_ext as tl


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        features = self.block2(self.block1(x)).mean((2, 3))
        return self.fc(features), features


def _data(generator):
    # Three classes told apart by the orientation of a bright bar: horizontal, vertical, diagonal.
    labels = torch.arange(48) % 3
    x = 0.3 * torch.randn(48, 1, 8, 8, generator=generator)
    x[labels == 0, :, 4, 1:7] += 2.0
    x[labels == 1, :, 1:7, 4] += 2.0
    diagonal = torch.arange(1, 7)
    x[(labels == 2).nonzero(), 0, diagonal, diagonal] += 2.0
    return x, labels


def test_regularized_fine_tuning_decreases_the_loss_and_uses_every_method():
    generator = torch.Generator().manual_seed(0)
    x, y = _data(generator)
    source = _Net()
    model = tl.convert_model(copy.deepcopy(source), p=0.5)
    assert isinstance(model.block1[1], tl.StochNorm2d)
    layers = ["block1", "block2"]
    sp = tl.SPRegularization(source, model)
    delta = tl.AttentionBehavioralRegularization([torch.full((8,), 1 / 8), torch.full((16,), 1 / 16)])
    bss = tl.BatchSpectralShrinkage(k=1)
    source_getter = tl.IntermediateLayerGetter(source.eval(), layers, keep_output=False)
    target_getter = tl.IntermediateLayerGetter(model, layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    losses, terms = [], []
    for _ in range(40):
        with torch.no_grad():
            source_maps, _ = source_getter(x)
        target_maps, (logits, features) = target_getter(x)
        regularizers = (1e-3 * sp(), 1e-3 * delta(source_maps, target_maps), 1e-3 * bss(features))
        classification = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        (classification + sum(regularizers)).backward()
        optimizer.step()
        losses.append(classification.item())
        terms.append([t.item() for t in regularizers])

    assert losses[-1] < 0.5 * losses[0]
    # The weights moved away from the source, so L2-SP and DELTA became active; BSS is positive.
    assert terms[0][0] == 0 and terms[-1][0] > 0 and terms[-1][1] > 0 and terms[-1][2] > 0
    assert int(model.block1[1].num_batches_tracked) == 40
    model.eval()
    accuracy = (model(x)[0].argmax(1) == y).float().mean().item()
    assert accuracy > 0.9
