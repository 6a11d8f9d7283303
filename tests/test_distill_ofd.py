import math
import pathlib
import re

import pytest
import torch
from scipy import integrate, stats
from torch import nn

from tltorch_ext import OFD, pre_relu_features

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "api_distill.md"


def teacher_bn(beta, gamma):
    bn = nn.BatchNorm2d(len(beta))
    with torch.no_grad():
        bn.bias.copy_(torch.tensor(beta))
        bn.weight.copy_(torch.tensor(gamma))
    return bn


def numerical_negative_mean(beta, gamma):
    """E[x | x < 0] for x ~ N(beta, gamma²) by quadrature."""
    density = stats.norm(loc=beta, scale=abs(gamma)).pdf
    mass = integrate.quad(density, -math.inf, 0)[0]
    return integrate.quad(lambda x: x * density(x), -math.inf, 0)[0] / mass, mass


def test_margin_from_bn_matches_numerical_integral():
    beta = [0.0, 1.0, -1.0, 0.5, 2.5, -3.0]
    gamma = [1.0, 2.0, 0.5, -1.5, 0.9, 0.2]  # a negative γ: only |γ| matters
    margin = OFD.margin_from_bn(teacher_bn(beta, gamma))
    assert margin.dtype == torch.float32 and margin.shape == (6,)
    for c, (b, g) in enumerate(zip(beta, gamma)):
        expected, mass = numerical_negative_mean(b, g)
        assert mass >= 1e-3  # all in the conditional-mean regime
        assert margin[c].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert margin[0].item() == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-6)


def test_margin_from_bn_rare_negatives_and_zero_gamma():
    # P(x < 0) = Φ(−β/|γ|): Φ(−4) ≈ 3e-5 < 1e-3 → −3|γ|; Φ(−3) ≈ 1.35e-3 keeps the formula.
    margin = OFD.margin_from_bn(teacher_bn([4.0, 3.0, 2.0, -2.0, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0]))
    assert margin[0].item() == pytest.approx(-3.0)
    assert margin[1].item() == pytest.approx(numerical_negative_mean(3.0, 1.0)[0], rel=1e-5)
    assert margin[2:].tolist() == [0.0, -2.0, 0.0]  # σ = 0: the limit min(β, 0)


def identity_ofd(channels, margin=None):
    """An OFD whose connector is exactly the identity (eval BN with mean 0, var 1, eps 0)."""
    ofd = OFD(channels, channels, margin=margin)
    with torch.no_grad():
        ofd.connector[0].weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
    ofd.connector[1].eps = 0.0
    return ofd.eval()


def as_map(values):
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def test_partial_l2_mask_cases():
    #            s ≤ t ≤ 0 (masked)      | kept: s > t, t ≤ 0   | kept: t > 0
    student = as_map([-2.0, 0.0, -1.0, -1.0, -0.5, 1.0, -3.0, 0.5, 2.0])
    teacher = as_map([-1.0, 0.0, -1.0, 0.0, -1.0, 0.0, -9.0, 1.0, 1.0])
    # margin −2: teacher −9 becomes target −2 (s = −3 ≤ −2 ≤ 0: masked); no other target moves.
    ofd = identity_ofd(1, margin=torch.tensor([-2.0]))
    student.requires_grad_(True)
    loss = ofd(student, teacher)
    kept_squares = [0.25, 1.0, 0.25, 1.0]  # (−0.5+1)², (1−0)², (0.5−1)², (2−1)²
    assert loss.item() == pytest.approx(sum(kept_squares) / 9, rel=1e-6)
    loss.backward()
    masked = torch.tensor([1, 1, 1, 1, 0, 0, 1, 0, 0], dtype=torch.bool)
    assert (student.grad.view(-1)[masked] == 0).all()
    assert (student.grad.view(-1)[~masked] != 0).all()


def test_margin_clips_teacher_from_below():
    # s = −1.5 against teacher −4, target max(−4, m): m = −5 leaves it, (2.5)²; m = −3 lifts it,
    # (1.5)²; m = −1 lifts it above the student, s ≤ t ≤ 0, masked.
    student, teacher = as_map([-1.5]), as_map([-4.0])
    for margin, expected in ((-5.0, 6.25), (-3.0, 2.25), (-1.0, 0.0)):
        loss = identity_ofd(1, torch.tensor([margin]))(student, teacher)
        assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_batch_margin_is_mean_of_negative_teacher_responses():
    # Channel 0 negatives −1, −3 → m = −2; channel 1 has none → m = 0 (target = relu(teacher)).
    teacher = torch.tensor([[-1.0, -3.0, 2.0, 0.0], [1.0, 0.0, 3.0, 2.0]]).view(1, 2, 1, 4)
    student = torch.tensor([[-1.5, -1.5, 2.0, 0.0], [0.0, -1.0, 3.0, 2.0]]).view(1, 2, 1, 4)
    ofd = identity_ofd(2)
    assert ofd.margin is None and "margin" not in ofd.state_dict()
    # kept: channel 0 position 1, (−1.5 + 2)²; channel 1 position 0, (0 − 1)²; all else 0 or masked.
    assert ofd(student, teacher).item() == pytest.approx((0.25 + 1.0) / 8, rel=1e-6)


def test_margin_sources_and_state_dict():
    bn = teacher_bn([0.3, -0.2, 1.0], [1.0, 0.7, 2.0])
    from_bn = OFD(4, 3, margin=bn)
    torch.testing.assert_close(from_bn.margin, OFD.margin_from_bn(bn))
    assert "margin" in from_bn.state_dict()
    restored = OFD(4, 3, margin=torch.zeros(3))
    restored.load_state_dict(from_bn.state_dict())
    s, t = torch.randn(2, 4, 5, 3), torch.randn(2, 3, 5, 3)
    torch.testing.assert_close(restored(s, t), from_bn(s, t))


def test_ofd_gradients_reach_student_and_connector_not_teacher():
    ofd = OFD(4, 6)
    s = torch.randn(3, 4, 5, 7, requires_grad=True)
    t = torch.randn(3, 6, 5, 7, requires_grad=True)
    ofd(s, t).backward()
    assert s.grad.abs().sum() > 0
    assert ofd.connector[0].weight.grad.abs().sum() > 0
    assert ofd.connector[1].weight.grad.abs().sum() > 0
    assert t.grad is None


def test_ofd_bfloat16():
    ofd = OFD(4, 6, margin=torch.full((6,), -0.5))
    s, t = torch.randn(3, 4, 5, 5), torch.randn(3, 6, 5, 5)
    reference = ofd(s, t)
    low = ofd.to(torch.bfloat16)(s.bfloat16(), t.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), reference, rtol=3e-2, atol=1e-3)


def test_ofd_bad_input():
    ofd = OFD(4, 6)
    with pytest.raises(ValueError, match=r"student_pre_relu must have shape \(B, 4, H, W\)"):
        ofd(torch.randn(2, 5, 3, 3), torch.randn(2, 6, 3, 3))
    with pytest.raises(ValueError, match=r"teacher_pre_relu must have shape \(B, 6, H, W\)"):
        ofd(torch.randn(2, 4, 3, 3), torch.randn(2, 6, 9))
    with pytest.raises(ValueError, match=r"share batch size and \(H, W\)"):
        ofd(torch.randn(2, 4, 3, 3), torch.randn(2, 6, 4, 3))
    with pytest.raises(TypeError, match="teacher_pre_relu must be float16"):
        ofd(torch.randn(2, 4, 3, 3), torch.ones(2, 6, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"margin must have shape \(6,\)"):
        OFD(4, 6, margin=torch.zeros(5))
    with pytest.raises(TypeError, match="margin must be None, a floating-point tensor"):
        OFD(4, 6, margin=[0.0] * 6)
    with pytest.raises(ValueError, match="bn must be affine"):
        OFD.margin_from_bn(nn.BatchNorm2d(3, affine=False))
    with pytest.raises(ValueError, match="out_channels must be a positive int"):
        OFD(4, 0)


class TinyBlock(nn.Module):
    """One in-place ReLU applied twice, the second time to a residual sum (as in ResNet blocks)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.conv1(x))) + x)


def test_pre_relu_features_captures_last_input_of_inplace_relu():
    block = TinyBlock()
    x = torch.randn(2, 2, 4, 4)
    with pre_relu_features(block, ["relu", "conv1"]) as features:
        out = block(x)
    expected = block.conv2(torch.relu(block.conv1(x))) + x
    torch.testing.assert_close(features["relu"], expected)  # not overwritten by the in-place ReLU
    assert (features["relu"] < 0).any()
    torch.testing.assert_close(features["conv1"], x)
    features["relu"].sum().backward()
    assert block.conv2.weight.grad.abs().sum() > 0
    block(x)  # hooks removed after the with block: nothing recorded any more
    assert torch.equal(out, block(x)) and features["relu"].grad_fn is not None
    assert not block.relu._forward_pre_hooks


def test_pre_relu_features_bad_names():
    with pytest.raises(ValueError, match=r"layer_names not found in the model: \['relu9'\]"):
        with pre_relu_features(TinyBlock(), ["relu", "relu9"]):
            pass
    with pytest.raises(TypeError, match="layer_names must be a sequence"):
        with pre_relu_features(TinyBlock(), "relu"):
            pass


def test_docs_examples_run():
    """Every python block of docs/api_distill.md runs; the last trains a student with KD + OFD and
    asserts that the loss halves."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(blocks) == 3
    for block in blocks:
        namespace = {}
        exec(compile(block, str(DOCS), "exec"), namespace)
    assert namespace["losses"][-1] < 0.5 * namespace["losses"][0]
