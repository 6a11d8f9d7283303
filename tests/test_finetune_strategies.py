"""Fine-tuning strategies (docs/api_finetune.md)."""
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tltorch_ext.finetune import (
    FeatureExtractor,
    GradualUnfreezing,
    extract_features,
    forgetting,
    freeze_policy,
    layerwise_lr_groups,
    lwf,
    replace_head,
)


class CountingHead(nn.Linear):
    calls = 0

    def forward(self, x):
        CountingHead.calls += 1
        return super().forward(x)


def three_block_net():
    return nn.Sequential(OrderedDict(
        stem=nn.Linear(4, 5), act=nn.ReLU(), body=nn.Linear(5, 5), head=nn.Linear(5, 3)
    ))


# ------------------------------------------------------------------------------ feature extraction

def test_feature_extractor_returns_layer_output_and_skips_the_rest():
    body = nn.Sequential(nn.ReLU(), nn.Linear(5, 2))
    model = nn.Sequential(OrderedDict(stem=nn.Linear(4, 5), body=body, head=CountingHead(2, 3)))
    x = torch.randn(3, 4)
    CountingHead.calls = 0
    features = FeatureExtractor(model, "body.1")(x)
    torch.testing.assert_close(features, model.body(model.stem(x)))
    assert CountingHead.calls == 0
    with pytest.raises(ValueError, match="close matches: \\['body.1'"):
        FeatureExtractor(model, "body.2")
    with pytest.raises(TypeError, match="layer_name must be a str"):
        FeatureExtractor(model, ["body"])


def test_extract_features_in_loader_order_and_restores_mode():
    model = three_block_net()
    model.train()
    x, y = torch.randn(7, 4), torch.arange(7)
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    features, labels = extract_features(model, loader, layer_name="body")
    assert model.training
    with torch.no_grad():
        torch.testing.assert_close(features, model.body(torch.relu(model.stem(x))))
    assert labels.tolist() == list(range(7))
    outputs, no_labels = extract_features(model, DataLoader(x, batch_size=4))
    assert no_labels is None
    with torch.no_grad():
        torch.testing.assert_close(outputs, model(x))


# ------------------------------------------------------------------------------ gradual unfreezing

def test_gradual_unfreezing_adds_groups_and_keeps_optimizer_state():
    model = three_block_net()
    optimizer = torch.optim.Adam(model.head.parameters(), lr=0.01)
    schedule = GradualUnfreezing(model, optimizer, epochs_per_stage=2)
    assert [p.requires_grad for p in model.parameters()] == [False, False, False, False, True, True]
    assert schedule.unfrozen_blocks == ["head"]

    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))

    def train_step():
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    train_step()
    train_step()
    head_state = {k: v.clone() for k, v in optimizer.state[model.head.weight].items()}
    assert schedule.step() == []  # epoch 1: stage 0 still
    assert schedule.step() == ["body"]  # epoch 2: one more block
    assert len(optimizer.param_groups) == 2
    assert optimizer.param_groups[1]["params"] == list(model.body.parameters())
    assert optimizer.param_groups[1]["lr"] == 0.01
    for key, value in head_state.items():  # state untouched by the new group
        torch.testing.assert_close(optimizer.state[model.head.weight][key], value)
    body_before = model.body.weight.detach().clone()
    stem_before = model.stem.weight.detach().clone()
    train_step()
    assert not torch.equal(model.body.weight, body_before)
    assert torch.equal(model.stem.weight, stem_before)
    assert optimizer.state[model.head.weight]["step"].item() == 3  # the head's Adam count went on
    assert optimizer.state[model.body.weight]["step"].item() == 1
    schedule.step()
    assert schedule.step() == ["stem"]
    assert schedule.step() == [] and len(optimizer.param_groups) == 3


def test_gradual_unfreezing_with_optimizer_holding_everything_and_resume():
    model = three_block_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = GradualUnfreezing(model, optimizer, epochs_per_stage=1, lr=0.5)
    assert schedule.step() == ["body"]
    assert len(optimizer.param_groups) == 1  # nothing new to add: parameters only unfrozen
    assert model.body.weight.requires_grad and not model.stem.weight.requires_grad
    fresh = three_block_net()
    resumed = GradualUnfreezing(fresh, torch.optim.SGD(fresh.head.parameters(), lr=0.1), lr=0.5)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.unfrozen_blocks == ["head", "body"]
    assert resumed.optimizer.param_groups[1]["lr"] == 0.5
    with pytest.raises(ValueError, match="epochs_per_stage must be a positive int"):
        GradualUnfreezing(model, optimizer, epochs_per_stage=0)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        GradualUnfreezing(model, [optimizer])


# ------------------------------------------------------------------------------ layer-wise lr

class WithRootParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.position = nn.Parameter(torch.zeros(4))
        self.embed = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.act = nn.ReLU()
        self.block = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        self.head = nn.Linear(4, 2)


def test_layerwise_lr_groups_one_group_per_block():
    model = WithRootParameter()
    groups = layerwise_lr_groups(model, base_lr=1.0, decay=0.5)
    assert [g["name"] for g in groups] == ["(root)", "embed", "norm", "block", "head"]
    assert [g["lr"] for g in groups] == [0.0625, 0.125, 0.25, 0.5, 1.0]
    assert groups[3]["params"] == list(model.block.parameters())  # 4 tensors, one group
    assert groups[0]["params"] == [model.position]
    model.embed.requires_grad_(False)
    groups = layerwise_lr_groups(model, base_lr=2.0, decay=0.1)
    assert [g["name"] for g in groups] == ["(root)", "norm", "block", "head"]  # depth still counted
    assert [g["lr"] for g in groups] == pytest.approx([2e-4, 2e-2, 0.2, 2.0])
    torch.optim.SGD(groups)  # the groups are valid optimizer input
    with pytest.raises(ValueError, match="decay must be a non-negative number"):
        layerwise_lr_groups(model, 1.0, -1)


# ------------------------------------------------------------------------------ freeze policy

@pytest.mark.parametrize(
    "size, policy, trainable",
    [(500, "feature_extraction", ["head"]), (5_000, "last_block", ["body", "head"]),
     (50_000, "full", ["stem", "body", "head"])],
)
def test_freeze_policy(size, policy, trainable):
    model = three_block_net()
    assert freeze_policy(size, model) == policy
    for name in ("stem", "body", "head"):
        params = getattr(model, name).parameters()
        assert all(p.requires_grad == (name in trainable) for p in params)
    assert freeze_policy(size) == policy


def test_freeze_policy_thresholds_and_checks():
    assert freeze_policy(999) == "feature_extraction" and freeze_policy(1_000) == "last_block"
    assert freeze_policy(9_999) == "last_block" and freeze_policy(10_000) == "full"
    assert freeze_policy(50, small=10, large=100) == "last_block"
    with pytest.raises(ValueError, match="dataset_size must be a non-negative int"):
        freeze_policy(-1)
    with pytest.raises(ValueError, match="small <= large"):
        freeze_policy(5, small=10, large=1)


# ------------------------------------------------------------------------------ forgetting

def linear_logits(weight):
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def test_forgetting_reports_accuracies_and_drop():
    eye = torch.eye(3)
    source_x = eye[[0, 1, 2, 0]]
    source_loader = DataLoader(TensorDataset(source_x, torch.tensor([0, 1, 2, 0])), batch_size=3)
    target_loader = DataLoader(TensorDataset(eye[[0, 1]], torch.tensor([0, 0])), batch_size=2)
    pretrained = linear_logits(eye)  # predicts the source classes perfectly
    finetuned = linear_logits(eye[[0, 2, 1]])  # swaps classes 1 and 2: 2/4 right on the source
    result = forgetting(finetuned, source_loader, target_loader, source_reference=pretrained)
    assert result == {"source_accuracy": 50.0, "target_accuracy": 50.0, "source_drop": 50.0}
    result = forgetting(finetuned, source_loader, target_loader, source_reference=80.0)
    assert result["source_drop"] == 30.0
    assert forgetting(finetuned, source_loader, target_loader)["source_drop"] is None
    with pytest.raises(TypeError, match="source_reference must be an accuracy"):
        forgetting(finetuned, source_loader, target_loader, source_reference="high")


def test_forgetting_uses_the_source_head_of_a_two_head_classifier():
    backbone = nn.Identity()
    head_target = linear_logits(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))
    model = lwf.Classifier(backbone, 2, linear_logits(torch.eye(3)), head_target=head_target)
    x = torch.eye(3)
    result = forgetting(model, DataLoader(TensorDataset(x, torch.tensor([0, 1, 2]))),
                        DataLoader(TensorDataset(x, torch.tensor([0, 1, 0]))))
    assert result["source_accuracy"] == 100.0
    assert result["target_accuracy"] == pytest.approx(200 / 3)


# ------------------------------------------------------------------------------ replace_head

class ResNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Linear(4, 6)
        self.fc = nn.Linear(6, 1000, bias=False)


class VGGLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Linear(4, 6)
        self.classifier = nn.Sequential(
            nn.Linear(6, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 1000)
        )


class TimmHeadLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Module()
        self.head.norm = nn.LayerNorm(6)
        self.head.fc = nn.Linear(6, 1000)
        self.num_classes = 1000


class SqueezeNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.classifier = nn.Sequential(nn.Dropout(), nn.Conv2d(6, 1000, 1), nn.ReLU())
        self.num_classes = 1000


def test_replace_head_on_fc_linear_keeps_bias_choice_dtype():
    model = ResNetLike().double()
    assert replace_head(model, 7) is model
    assert (model.fc.in_features, model.fc.out_features, model.fc.bias) == (6, 7, None)
    assert model.fc.weight.dtype == torch.float64


def test_replace_head_on_sequential_classifier_replaces_last_linear_only():
    model = VGGLike()
    first = model.classifier[0]
    replace_head(model, 5)
    assert model.classifier[0] is first
    assert model.classifier[3].out_features == 5 and model.classifier[3].in_features == 8
    assert model.classifier[3].bias is not None


def test_replace_head_on_nested_head_and_conv_head():
    model = TimmHeadLike()
    norm = model.head.norm
    replace_head(model, 3)
    assert model.head.fc.out_features == 3 and model.head.norm is norm and model.num_classes == 3
    squeeze = SqueezeNetLike()
    replace_head(squeeze, 4)
    assert squeeze.classifier[1].out_channels == 4 and squeeze.classifier[1].kernel_size == (1, 1)
    assert squeeze.num_classes == 4


def test_replace_head_prefers_reset_classifier():
    class TimmModel(ResNetLike):
        def reset_classifier(self, num_classes):
            self.reset_to = num_classes

    model = TimmModel()
    replace_head(model, 9)
    assert model.reset_to == 9 and model.fc.out_features == 1000


def test_replace_head_errors():
    with pytest.raises(ValueError, match="no head module among the attributes"):
        replace_head(nn.Linear(2, 2), 3)
    model = ResNetLike()
    model.fc = nn.Identity()
    with pytest.raises(ValueError, match=r"model.fc \(Identity\) holds no nn.Linear"):
        replace_head(model, 3)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        replace_head(ResNetLike(), 0)
