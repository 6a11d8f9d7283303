"""L2, L2-SP, DELTA regularizers, channel attention and IntermediateLayerGetter
(docs/api_finetune.md)."""
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tltorch_ext.finetune import (
    AttentionBehavioralRegularization,
    BehavioralRegularization,
    IntermediateLayerGetter,
    L2Regularization,
    SPRegularization,
    compute_channel_attention,
)


def linear_with(weight, bias):
    layer = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return layer


# ---------------------------------------------------------------------------------------------- L2

def test_l2_is_half_squared_norm_of_trainable_parameters():
    model = linear_with([[0, 1, 2], [3, 4, 5]], [1, -2])
    regularizer = L2Regularization(model)
    assert regularizer().item() == pytest.approx(0.5 * (55 + 5))
    model.bias.requires_grad_(False)  # read at call time
    loss = regularizer()
    assert loss.item() == pytest.approx(0.5 * 55)
    loss.backward()
    torch.testing.assert_close(model.weight.grad, model.weight.detach())  # d(½‖w‖²)/dw = w
    assert model.bias.grad is None


def test_l2_does_not_own_the_model_and_checks_arguments():
    model = nn.Linear(3, 2)
    assert L2Regularization(model).state_dict() == OrderedDict()
    with pytest.raises(ValueError, match="no parameters"):
        L2Regularization(nn.ReLU())
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        L2Regularization([torch.zeros(2)])


def test_l2_all_frozen_is_zero():
    model = nn.Linear(3, 2).requires_grad_(False)
    assert L2Regularization(model)().item() == 0.0


def test_l2_half_precision_accumulates_in_float32():
    model = nn.Linear(200, 200).half()
    with torch.no_grad():
        model.weight.fill_(20.0)  # ½·40000·400 = 8e6 overflows float16 (max 65504)
    loss = L2Regularization(model)()
    assert loss.dtype == torch.float32
    expected = 0.5 * (40000 * 400.0 + model.bias.double().square().sum().item())
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------- L2-SP

def sp_models():
    source = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 3))
    target = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 5))  # new head: "1.*" differs in shape
    target[0].load_state_dict(source[0].state_dict())
    return source, target


def test_sp_skips_new_head_and_uses_construction_time_copy():
    source, target = sp_models()
    regularizer = SPRegularization(source, target)
    delta = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    with torch.no_grad():
        target[0].weight.add_(delta)
        target[0].bias.add_(torch.tensor([1.0, 3.0]))
        target[1].weight.add_(100.0)  # the new head never counts
        source[0].weight.add_(7.0)  # later changes of the source model do not matter
    loss = regularizer()
    assert loss.item() == pytest.approx(0.5 * (0.25 + 1 + 4 + 1 + 9))
    loss.backward()
    torch.testing.assert_close(target[0].weight.grad, delta)  # gradient w − w⁰
    assert target[1].weight.grad is None


def test_sp_counts_only_trainable_parameters_and_keeps_w0_in_buffers():
    source, target = sp_models()
    regularizer = SPRegularization(source, target)
    assert sorted(regularizer.state_dict()) == ["w0_0", "w0_1"]
    with torch.no_grad():
        target[0].bias.add_(2.0)
        target[0].weight.add_(1.0)
    target[0].weight.requires_grad_(False)
    assert regularizer().item() == pytest.approx(0.5 * (4 + 4))


def test_sp_same_model_before_training_is_zero_and_checks():
    model = nn.Linear(4, 3)
    regularizer = SPRegularization(model, model)
    assert regularizer().item() == 0.0
    with pytest.raises(ValueError, match="share no parameter"):
        SPRegularization(nn.Linear(2, 2), nn.Linear(3, 3))
    with pytest.raises(ValueError, match="move the regularizer"):
        regularizer.to("meta")()


# ---------------------------------------------------------------------------------------- DELTA

def test_behavioral_is_half_squared_distance_with_detached_source():
    source = OrderedDict(a=torch.randn(2, 3, 4, 4, requires_grad=True), b=torch.randn(2, 5))
    target = OrderedDict(a=torch.randn(2, 3, 4, 4, requires_grad=True), b=torch.randn(2, 5))
    loss = BehavioralRegularization()(source, target)
    expected = sum(0.5 * (target[k].double() - source[k].double()).pow(2).sum() for k in source)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    torch.testing.assert_close(target["a"].grad, (target["a"] - source["a"]).detach())
    assert source["a"].grad is None


def test_behavioral_rejects_mismatched_layers():
    regularizer = BehavioralRegularization()
    with pytest.raises(ValueError, match="same names in the same order"):
        scalar = torch.zeros(1)
        regularizer({"a": scalar, "b": scalar}, {"b": scalar, "a": scalar})
    with pytest.raises(ValueError, match=r"layer 'a': source map has shape \(1, 2\)"):
        regularizer({"a": torch.zeros(1, 2)}, {"a": torch.zeros(1, 3)})
    with pytest.raises(TypeError, match="layer_outputs_source must be a dict"):
        regularizer([torch.zeros(1)], {"a": torch.zeros(1)})


def test_attention_behavioral_hand_computed():
    target = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 1.0]]]])  # (1, 2, 2, 2)
    weights = torch.tensor([0.25, 0.75])
    regularizer = AttentionBehavioralRegularization([weights])
    loss = regularizer({"x": torch.zeros_like(target)}, {"x": target})
    # d = (30, 1); ½ · c · Σ_c W_c d_c / (h·w) = ½ · 2 · (0.25·30 + 0.75·1) / 4
    assert loss.item() == pytest.approx(2.0625)


def test_attention_behavioral_against_float64_formula_and_uniform_case():
    maps = [(3, 5, 4), (4, 2, 3), (2, 1, 1)]  # (c, h, w) of the layers, batch 2
    source = OrderedDict((f"l{j}", torch.randn(2, *shape)) for j, shape in enumerate(maps))
    target = OrderedDict((f"l{j}", torch.randn(2, *shape)) for j, shape in enumerate(maps))
    weights = [torch.softmax(torch.randn(c), 0) for c, _, _ in maps]
    loss = AttentionBehavioralRegularization(weights)(source, target)
    expected = 0.0
    for (name, s), t, wj, (c, h, w) in zip(source.items(), target.values(), weights, maps):
        for b in range(2):
            for ch in range(c):
                d = (t[b, ch].double() - s[b, ch].double()).pow(2).sum()
                expected += 0.5 * c * wj[ch].double() * d / (h * w)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # uniform weights 1/c: each layer is the behavioral term divided by h·w
    uniform = [torch.full((c,), 1.0 / c) for c, _, _ in maps]
    loss_uniform = AttentionBehavioralRegularization(uniform)(source, target)
    expected_uniform = sum(
        BehavioralRegularization()({k: source[k]}, {k: target[k]}) / (h * w)
        for k, (c, h, w) in zip(source, maps)
    )
    assert loss_uniform.item() == pytest.approx(expected_uniform.item(), rel=1e-6)


def test_attention_behavioral_vector_and_sequence_maps_in_half_precision():
    """(b, c) maps have no spatial size (S = 1); (b, c, L) maps have S = L."""
    source = {"vec": torch.zeros(2, 2), "seq": torch.zeros(1, 2, 4)}
    target = {"vec": torch.tensor([[1.0, 2.0], [0.0, 3.0]]), "seq": torch.ones(1, 2, 4)}
    weights = [torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])]
    regularizer = AttentionBehavioralRegularization(weights)
    # vec: ½·2·(0.5·(1 + 0) + 0.5·(4 + 9)) = 7; seq: ½·2·(1·4)/4 = 1
    assert regularizer(source, target).item() == pytest.approx(8.0)
    def halved(maps):
        return {name: value.half() for name, value in maps.items()}

    half = regularizer(halved(source), halved(target))
    assert half.dtype == torch.float32 and half.item() == pytest.approx(8.0)
    with pytest.raises(ValueError, match="must not be empty"):
        BehavioralRegularization()({}, {})


def test_attention_behavioral_state_and_checks():
    regularizer = AttentionBehavioralRegularization([torch.ones(3), torch.ones(2)])
    assert list(regularizer.state_dict()) == ["channel_attention_0", "channel_attention_1"]
    maps = {"a": torch.zeros(1, 3, 2, 2), "b": torch.zeros(1, 4, 2, 2)}
    with pytest.raises(ValueError, match=r"'b' has 4 channels but channel_attention\[1\] has 2"):
        regularizer(maps, maps)
    with pytest.raises(ValueError, match="feature maps of 2 layers"):
        regularizer({"a": maps["a"]}, {"a": maps["a"]})
    with pytest.raises(ValueError, match=r"channel_attention\[0\] must be a 1-D tensor"):
        AttentionBehavioralRegularization([torch.ones(2, 2)])
    with pytest.raises(TypeError, match="one \\(C_j,\\) tensor per layer"):
        AttentionBehavioralRegularization(torch.ones(3))


def test_regularizers_compile_fullgraph():
    source, target = sp_models()
    maps_s = {"a": torch.randn(2, 3, 4, 4)}
    maps_t = {"a": torch.randn(2, 3, 4, 4)}
    attention = AttentionBehavioralRegularization([torch.softmax(torch.randn(3), 0)])
    sp = SPRegularization(source, target)
    with torch.no_grad():
        target[0].weight.add_(1.0)
    compiled_sp = torch.compile(sp, backend="aot_eager", fullgraph=True)
    compiled_attention = torch.compile(attention, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled_sp(), sp())
    torch.testing.assert_close(compiled_attention(maps_s, maps_t), attention(maps_s, maps_t))


# ------------------------------------------------------------------------------ channel attention

class TinyConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def manual_rises(model, layer, loader, n_channels=4):
    """Mean per-sample loss rise per channel, zeroing one channel at a time (float64)."""
    model = model.double().eval()
    total, count = torch.zeros(n_channels, dtype=torch.float64), 0

    def zero_channel(c):
        keep = (torch.arange(n_channels) != c).double().view(1, -1, 1, 1)
        return lambda module, args, out: out * keep

    with torch.no_grad():
        for x, y in loader:
            base = F.cross_entropy(model(x.double()), y, reduction="none")
            for c in range(n_channels):
                handle = layer.register_forward_hook(zero_channel(c))
                total[c] += (F.cross_entropy(model(x.double()), y, reduction="none") - base).sum()
                handle.remove()
            count += len(y)
    return total / count


@pytest.mark.parametrize("channels_per_pass", [1, 3, 16])
def test_channel_attention_matches_one_channel_at_a_time(channels_per_pass):
    model = TinyConvNet()
    x, y = torch.randn(10, 2, 3, 3), torch.randint(0, 3, (10,))
    loader = DataLoader(TensorDataset(x, y), batch_size=4)  # batches 4, 4, 2
    model.train()
    attention = compute_channel_attention(
        model, ["conv"], loader, channels_per_pass=channels_per_pass, progress=False
    )
    assert model.training and model.conv.training  # modes restored
    assert not model.conv._forward_hooks
    reference = TinyConvNet()
    reference.load_state_dict(model.state_dict())
    rises = manual_rises(reference, reference.conv, loader)
    z = (rises - rises.mean()) / rises.std(unbiased=False)
    expected = torch.exp(z / 5) / torch.exp(z / 5).sum()
    assert len(attention) == 1 and attention[0].dtype == torch.float32
    torch.testing.assert_close(attention[0].double(), expected, rtol=1e-5, atol=1e-6)


def test_channel_attention_known_effect_and_temperature():
    """features = x (3 channels); logits = x · diag-like head: zeroing channel c changes only the
    logits it feeds, so the rises are known in closed form."""
    model = nn.Sequential(OrderedDict(features=nn.Identity(), head=nn.Linear(3, 2, bias=False)))
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    x = torch.tensor([[1.0, 1.0, 5.0], [2.0, 0.5, -3.0]])
    y = torch.tensor([0, 0])
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    for temperature in (5.0, 0.5):
        attention = compute_channel_attention(
            model, ["features"], loader, temperature=temperature, progress=False
        )[0]
        logit0, logit1 = 2.0 * x[:, 0].double(), x[:, 1].double()
        zero = torch.zeros(2, dtype=torch.float64)

        def loss(l0, l1):
            return F.cross_entropy(torch.stack([l0, l1], 1), y, reduction="none")

        # zeroing channel 0 removes the class-0 logit 2·x0; channel 1 removes the class-1 logit x1;
        # channel 2 feeds nothing (rise exactly 0)
        base = loss(logit0, logit1)
        rises = torch.stack([
            (loss(zero, logit1) - base).mean(), (loss(logit0, zero) - base).mean(), zero[0]
        ])
        z = (rises - rises.mean()) / rises.std(unbiased=False)
        expected = torch.softmax(z / temperature, 0)
        torch.testing.assert_close(attention.double(), expected, rtol=1e-5, atol=1e-7)
        assert attention.argmax().item() == 0 and attention.sum().item() == pytest.approx(1.0)


def test_channel_attention_uniform_when_no_channel_matters():
    model = nn.Sequential(OrderedDict(features=nn.Linear(2, 4), head=nn.Linear(4, 3)))
    with torch.no_grad():
        model.head.weight.zero_()
    loader = DataLoader(TensorDataset(torch.randn(6, 2), torch.randint(0, 3, (6,))), batch_size=3)
    attention = compute_channel_attention(model, ["features"], loader, progress=False)[0]
    torch.testing.assert_close(attention, torch.full((4,), 0.25))


def test_channel_attention_argument_checks():
    model = TinyConvNet()
    x = torch.randn(4, 2, 3, 3)
    loader = DataLoader(TensorDataset(x, torch.randint(0, 3, (4,))), batch_size=2)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        compute_channel_attention(model, ["conv"], loader, temperature=0, progress=False)
    with pytest.raises(ValueError, match="no submodule named 'conv1'.*'conv'"):
        compute_channel_attention(model, ["conv1"], loader, progress=False)
    with pytest.raises(ValueError, match=r"per-sample losses of shape \(2,\)"):
        compute_channel_attention(
            model, ["conv"], loader, criterion=F.cross_entropy, progress=False
        )
    with pytest.raises(ValueError, match="must yield \\(inputs, targets\\)"):
        compute_channel_attention(model, ["conv"], DataLoader(x), progress=False)


# ------------------------------------------------------------------------- IntermediateLayerGetter

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Linear(3, 3)
        self.conv2 = nn.Linear(3, 3)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(3, 3)
        self.layer1 = nn.Sequential(Block(), Block())
        self.fc = nn.Linear(3, 2)
        self.fail = False
        self.fc_calls = 0

    def forward(self, x):
        x = self.layer1(self.stem(x))
        if self.fail:
            raise RuntimeError("boom")
        self.fc_calls += 1
        return self.fc(x)


def test_layer_getter_outputs_in_requested_order():
    model = Net()
    x = torch.randn(5, 3)
    getter = IntermediateLayerGetter(model, ["layer1.1", "layer1.0.conv1", "stem"])
    outputs, output = getter(x)
    assert list(outputs) == ["layer1.1", "layer1.0.conv1", "stem"]
    stem = model.stem(x)
    torch.testing.assert_close(outputs["stem"], stem)
    torch.testing.assert_close(outputs["layer1.0.conv1"], model.layer1[0].conv1(stem))
    torch.testing.assert_close(outputs["layer1.1"], model.layer1(stem))
    torch.testing.assert_close(output, model.fc(model.layer1(stem)))
    assert all(not m._forward_hooks for m in model.modules())


def test_layer_getter_removes_hooks_when_model_raises():
    model = Net()
    getter = IntermediateLayerGetter(model, ["stem", "layer1.0"])
    model.fail = True
    with pytest.raises(RuntimeError, match="boom"):
        getter(torch.randn(2, 3))
    assert all(not m._forward_hooks for m in model.modules())


def test_layer_getter_without_output_stops_early():
    model = Net()
    getter = IntermediateLayerGetter(model, ["layer1"], keep_output=False)
    outputs, output = getter(torch.randn(2, 3))
    assert output is None and model.fc_calls == 0 and outputs["layer1"].shape == (2, 3)
    assert all(not m._forward_hooks for m in model.modules())


def test_layer_getter_errors():
    model = Net()
    with pytest.raises(ValueError, match=r"named 'layer1\.0\.conv'.*'layer1\.0\.conv1'"):
        IntermediateLayerGetter(model, ["layer1.0.conv"])
    with pytest.raises(TypeError, match="list or tuple of submodule names"):
        IntermediateLayerGetter(model, "stem")
    with pytest.raises(ValueError, match="names a submodule twice"):
        IntermediateLayerGetter(model, ["stem", "stem"])


def test_layer_getter_reports_a_layer_that_did_not_run():
    model = nn.ModuleDict({"used": nn.Linear(2, 2), "unused": nn.Linear(2, 2)})
    model.forward = lambda x: model["used"](x)
    with pytest.raises(RuntimeError, match=r"did not run during the forward pass: \['unused'\]"):
        IntermediateLayerGetter(model, ["used", "unused"])(torch.randn(1, 2))


def test_channel_attention_rejects_layer_without_channel_tensor():
    class TwoOutputs(nn.Module):
        def forward(self, x):
            return x, -x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = TwoOutputs()
            self.head = nn.Linear(3, 2)

        def forward(self, x):
            return self.head(self.pair(x)[0])

    loader = DataLoader(TensorDataset(torch.randn(2, 3), torch.tensor([0, 1])), batch_size=2)
    with pytest.raises(TypeError, match=r"layer 'pair' must output one tensor \(b, C, ...\)"):
        compute_channel_attention(Net(), ["pair"], loader, progress=False)
