"""Overhaul of feature distillation (Heo et al., 2019), docs/api_distill.md."""
import contextlib
import math

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .._tensors import check_floating, positive_int

__all__ = ["OFD", "pre_relu_features"]


def _check_map(name, x, channels):
    check_floating(name, x)
    if x.dim() != 4 or x.shape[0] == 0 or x.shape[1] != channels:
        raise ValueError(f"{name} must have shape (B, {channels}, H, W) with B >= 1, got "
                         f"{tuple(x.shape)}")


class OFD(nn.Module):
    r"""Feature distillation with a margin-clipped teacher and a partial L2 loss.

    The student's pre-ReLU map s₀ (B, in_channels, H, W) goes through a connector
    (1×1 convolution without bias, then BatchNorm): s = BN(conv(s₀)) (B, out_channels, H, W). The
    teacher's pre-ReLU map is clipped below at a per-channel margin m_c, t = max(teacher, m_c),
    which keeps the negative responses' scale but not their detail (the ReLU discards them anyway).
    The partial L2 distance skips the positions where the student is already below a non-positive
    target (both would vanish after the ReLU):

        loss = mean over (B, C, H, W) of (s − t)² · mask,   mask = 0 where s ≤ t ≤ 0, else 1.

    The margin is, in order of precedence: the ``margin`` given, a (out_channels,) tensor or the
    teacher's BatchNorm before the ReLU (see `margin_from_bn`); both are stored in the buffer
    ``margin``. With ``margin=None`` it is taken from each batch: per channel, the mean of the
    teacher's negative responses (0 for a channel without any).

    The teacher map is a fixed target (no gradient flows into it). Computed in float32 (float64
    for float64 maps); the loss has the student map's dtype.
    """

    def __init__(self, in_channels: int, out_channels: int, margin=None):
        super().__init__()
        self.in_channels = positive_int("in_channels", in_channels)
        self.out_channels = out_channels = positive_int("out_channels", out_channels)
        self.connector = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        # He initialization of the connector, as the method prescribes.
        nn.init.kaiming_normal_(self.connector[0].weight, mode="fan_out", nonlinearity="relu")
        if isinstance(margin, _BatchNorm):
            margin = self.margin_from_bn(margin)
        elif margin is not None:
            if not isinstance(margin, torch.Tensor) or not margin.is_floating_point():
                raise TypeError("margin must be None, a floating-point tensor (out_channels,) or "
                                f"a BatchNorm module, got {type(margin).__name__}")
            if tuple(margin.shape) != (out_channels,):
                raise ValueError(f"margin must have shape ({out_channels},), got "
                                 f"{tuple(margin.shape)}")
            margin = margin.detach().clone()
        self.register_buffer("margin", margin)

    def extra_repr(self) -> str:
        source = "batch" if self.margin is None else "fixed"
        return f"{self.in_channels}, {self.out_channels}, margin={source}"

    @staticmethod
    def margin_from_bn(bn: _BatchNorm) -> torch.Tensor:
        r"""Per-channel margin E[x | x < 0] for x ~ N(β, γ²), β and γ the BatchNorm's affine terms.

        With σ = |γ| and a = β / σ, x < 0 is z < −a for z standard normal, and
        E[z | z < −a] = −φ(a) / Φ(−a), so

            m = β − σ · φ(β/σ) / Φ(−β/σ),

        φ and Φ the standard normal density and distribution. When Φ(−β/σ) < 1e-3 (negative
        responses are rare and the ratio unreliable) the margin is −3σ instead. σ = 0 gives the
        limit min(β, 0). Computed in float64; returns a detached float32 tensor (C,) on the
        BatchNorm's device.
        """
        if not isinstance(bn, _BatchNorm):
            raise TypeError(f"bn must be a BatchNorm module, got {type(bn).__name__}")
        if bn.weight is None or bn.bias is None:
            raise ValueError("bn must be affine (affine=True): the margin needs its weight γ and "
                             "bias β")
        beta = bn.bias.detach().double()
        sigma = bn.weight.detach().double().abs()
        safe_sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
        a = beta / safe_sigma
        p_negative = torch.special.ndtr(-a)
        density = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
        conditional_mean = beta - sigma * density / p_negative.clamp_min(1e-3)
        margin = torch.where(p_negative < 1e-3, -3 * sigma, conditional_mean)
        margin = torch.where(sigma > 0, margin, beta.clamp_max(0))
        return margin.float()

    def forward(self, student_pre_relu: torch.Tensor, teacher_pre_relu: torch.Tensor):
        _check_map("student_pre_relu", student_pre_relu, self.in_channels)
        _check_map("teacher_pre_relu", teacher_pre_relu, self.out_channels)
        if (student_pre_relu.shape[0] != teacher_pre_relu.shape[0]
                or student_pre_relu.shape[2:] != teacher_pre_relu.shape[2:]):
            raise ValueError("student_pre_relu and teacher_pre_relu must share batch size and "
                             f"(H, W), got {tuple(student_pre_relu.shape)} and "
                             f"{tuple(teacher_pre_relu.shape)}")
        if student_pre_relu.device != teacher_pre_relu.device:
            raise ValueError("student_pre_relu and teacher_pre_relu must be on the same device, "
                             f"got {student_pre_relu.device} and {teacher_pre_relu.device}")
        acc = torch.promote_types(student_pre_relu.dtype, torch.float32)
        student = self.connector(student_pre_relu).to(acc)
        teacher = teacher_pre_relu.detach().to(acc)
        margin = self.margin if self.margin is not None else _batch_margin(teacher)
        return _partial_l2(student, teacher, margin.to(acc)).to(student_pre_relu.dtype)



def _batch_margin(teacher: torch.Tensor) -> torch.Tensor:
    """Per channel, the mean of the negative entries of ``teacher`` (B, C, H, W); 0 if none."""
    negative = teacher.clamp_max(0)
    count = (negative < 0).sum(dim=(0, 2, 3))
    return negative.sum(dim=(0, 2, 3)) / count.clamp_min(1)


def _partial_l2(student, teacher, margin):
    """mean((s − t)² · mask) with t = max(teacher, margin_c) and mask = 0 where s ≤ t ≤ 0."""
    target = torch.maximum(teacher, margin.view(1, -1, 1, 1))
    keep = (student > target) | (target > 0)
    return ((student - target).square() * keep).mean()


@contextlib.contextmanager
def pre_relu_features(model: nn.Module, layer_names):
    """Capture the inputs of the named submodules (typically ReLUs) during forward passes.

    Inside ``with pre_relu_features(model, ["layer1.relu", ...]) as features:``, every forward
    of ``model`` stores, in the dict ``features``, each named module's input (for a ReLU: the
    pre-ReLU map), keyed by name. Inputs of in-place modules (``inplace=True``)
    are cloned before the module overwrites them; gradients still flow to the model. A module
    called several times in one forward keeps its last input: torchvision's ResNet blocks apply
    their single ``relu`` last to the sum with the shortcut, so "layerK.N.relu" yields the
    block's pre-ReLU output. The hooks are removed when the ``with`` block ends.
    """
    if isinstance(layer_names, str):
        raise TypeError("layer_names must be a sequence of module names, not a single str")
    modules = dict(model.named_modules())
    missing = [name for name in layer_names if name not in modules]
    if missing:
        raise ValueError(f"layer_names not found in the model: {missing}")
    features = {}

    def capture(name, inplace):
        def hook(module, args):
            features[name] = args[0].clone() if inplace else args[0]
        return hook

    handles = [modules[name].register_forward_pre_hook(
        capture(name, getattr(modules[name], "inplace", False))) for name in layer_names]
    try:
        yield features
    finally:
        for handle in handles:
            handle.remove()
