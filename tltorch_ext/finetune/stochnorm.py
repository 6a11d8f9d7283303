"""StochNorm (docs/api_stochnorm.md): BatchNorm whose channels each normalize, at random, with
the batch or the running statistics during fine-tuning.

The modules subclass ``_BatchNorm``, so a BatchNorm ``state_dict`` loads unchanged; the fused op
lives in :mod:`tltorch_ext.ops.stoch_norm`.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .._tensors import positive_int, real_number
from ..ops.stoch_norm import lerp_running_stats, stoch_norm


class _StochNorm(_BatchNorm):
    """In training with running statistics, channel c draws s_c ~ Bernoulli(p) once per forward
    and normalizes with
        x̂ = s_c (x − μ_B)/√(σ²_B + ε) + (1 − s_c)(x − μ_R)/√(σ²_R + ε),   y = γ x̂ + β,
    μ_R, σ²_R being the running statistics before this step; the running statistics then update
    as BatchNorm's. In evaluation, or with ``track_running_stats=False``, it is BatchNorm.
    """

    _ndims: tuple[int, ...] = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, p=0.5, device=None, dtype=None):
        num_features = positive_int("num_features", num_features)
        self.p = real_number("p", p, 0.0, 1.0)
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype)

    def extra_repr(self):
        return f"{super().extra_repr()}, p={self.p}"

    def _check_input_dim(self, input):
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        if input.dim() not in self._ndims:
            raise ValueError(
                f"{type(self).__name__} expects input of {' or '.join(map(str, self._ndims))} "
                f"dimensions, got shape {tuple(input.shape)}"
            )
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) got input with {input.shape[1]} "
                f"channels (shape {tuple(input.shape)})"
            )
        if not input.is_floating_point():
            raise TypeError(f"input must be a floating-point tensor, got {input.dtype}")

    def _count_batch(self):
        """Count this training batch; the running-statistics factor, as _BatchNorm's: momentum,
        or a cumulative average when momentum is None (a tensor: no host sync, and
        torch.compile keeps it in the graph)."""
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            return 1.0 / self.num_batches_tracked.to(self.running_mean.dtype)
        return self.momentum

    def _draw_mask(self, device) -> torch.Tensor:
        """s_c ~ Bernoulli(p) per channel, from torch's generator on ``device``."""
        return torch.rand(self.num_features, device=device) < self.p

    def forward(self, input):
        self._check_input_dim(input)
        if not (self.training and self.track_running_stats):
            return super().forward(input)
        factor = self._count_batch()
        mask = self._draw_mask(input.device)
        y, _, _, batch_mean, batch_var = stoch_norm(
            input, self.weight, self.bias, self.running_mean, self.running_var, mask, self.eps
        )
        lerp_running_stats(self.running_mean, self.running_var, batch_mean, batch_var,
                           input.numel() // self.num_features, factor)
        return y


class StochNorm1d(_StochNorm):
    """StochNorm over (N, C) or (N, C, L) input."""

    _ndims = (2, 3)


class StochNorm2d(_StochNorm):
    """StochNorm over (N, C, H, W) input, contiguous or channels_last (the output keeps it)."""

    _ndims = (4,)


class StochNorm3d(_StochNorm):
    """StochNorm over (N, C, D, H, W) input."""

    _ndims = (5,)


_STOCHNORM_OF = {
    nn.BatchNorm1d: StochNorm1d,
    nn.BatchNorm2d: StochNorm2d,
    nn.BatchNorm3d: StochNorm3d,
}


def rebuilt_as(norm: _BatchNorm, cls, *args) -> _BatchNorm:
    """``cls(norm's BatchNorm arguments, *args)`` on norm's device and dtype, carrying its affine
    parameters (and their ``requires_grad``), running statistics, ``num_batches_tracked`` and
    training flag."""
    like = norm.weight if norm.weight is not None else norm.running_mean
    new = cls(norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats,
              *args, device=None if like is None else like.device,
              dtype=None if like is None else like.dtype)
    new.load_state_dict(norm.state_dict())
    for name, param in norm.named_parameters(recurse=False):
        getattr(new, name).requires_grad_(param.requires_grad)
    return new.train(norm.training)


def convert_model(module: nn.Module, p: float) -> nn.Module:
    """Replace every BatchNorm1d/2d/3d inside ``module`` by the StochNorm of the same dimension,
    and every SyncBatchNorm (which serves any input rank) by a SyncStochNorm with its process
    group, keeping parameters, statistics, device, dtype and ``requires_grad``. Returns the
    module (``module`` itself is returned replaced when it is a BatchNorm)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    return _converted(module, real_number("p", p, 0.0, 1.0))


def _converted(module: nn.Module, p: float) -> nn.Module:
    if type(module) in _STOCHNORM_OF:
        return rebuilt_as(module, _STOCHNORM_OF[type(module)], p)
    if type(module) is nn.SyncBatchNorm:
        from .sync_stochnorm import SyncStochNorm  # noqa: PLC0415 (it imports this module)

        return rebuilt_as(module, SyncStochNorm, p, module.process_group)
    for name, child in module.named_children():
        setattr(module, name, _converted(child, p))
    return module

