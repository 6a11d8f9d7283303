"""SyncStochNorm (docs/api_stochnorm.md): StochNorm whose batch statistics and channel selection
are shared by every rank of a process group, for data-parallel training (gloo on CPU, NCCL on CUDA).

The local parts run on the backend the rest of the library selects (``tltorch_ext.set_backend``):
the StochNorm phase ops (docs/api_stochnorm.md) compute this rank's moments, normalize with the
group's statistics, and reduce and write the gradients; between them, one all_reduce in forward and
one in backward.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..distributed import _check_group, is_distributed
from .._tensors import check_floating, check_same_device, memory_format_of, stat_dtype
from ..ops._dispatch import resolve_for_backward
from ..ops.stoch_norm import (OP, _backward_elemt, _backward_reduce, _elemt, _stats,
                              update_running_stats)
from .stochnorm import _StochNorm, rebuilt_as

__all__ = ["SyncStochNorm", "sync_stoch_norm"]


def _group_all_reduce(t: Tensor, process_group) -> None:
    """In-place sum over the group; nothing to do outside a distributed run."""
    if is_distributed(process_group):
        dist.all_reduce(t, group=process_group)


def _is_group_root(process_group) -> bool:
    return not is_distributed(process_group) or dist.get_rank(process_group) == 0


class _SyncStochNormFunction(torch.autograd.Function):
    """Forward: y = γ (x − μ_c)·invstd_c + β with (μ_c, invstd_c) the group's batch statistics
    where s_c = 1 and the running ones where s_c = 0. Backward, N the group's count per channel:
        dx = γ·invstd·(dy − s·ΣG(dy)/N − x̂·s·ΣG(dy·x̂)/N),
        dγ = Σ(dy·x̂), dβ = Σ(dy) over this rank's values (DDP sums/averages them),
    ΣG summing over every rank's values (one all_reduce of the packed (2C,) sums).
    The local parts are the phase ops (stats, elemt, backward_reduce, backward_elemt) on the
    backend resolved at forward; a rank with no values (N_r = 0) skips them but still takes part
    in both all_reduces."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, proposed_mask, eps, process_group):
        channels = x.shape[1]
        acc = stat_dtype(x.dtype)
        local_count = x.numel() // channels
        backend = resolve_for_backward(OP, x.device)
        # Packed in float64: [Σx | Σx² | rank-0 mask | count]. Local moments come from a stable
        # float32 (mean, biased variance); Σx² = n·(var + mean²) in float64 keeps
        # Var = Σx²/N − mean² free of float32 cancellation when |mean| ≫ std. Ranks other than 0
        # add zeros to the mask slot, so the sum *is* rank 0's mask: its broadcast rides on the
        # same all_reduce.
        packed = torch.zeros(3 * channels + 1, dtype=torch.float64, device=x.device)
        if local_count > 0:
            mean, var = (t.double() for t in _stats(x))
            packed[:channels] = local_count * mean
            packed[channels:2 * channels] = local_count * (var + mean * mean)
        if proposed_mask is not None and _is_group_root(process_group):
            packed[2 * channels:3 * channels] = proposed_mask.double()
        packed[-1] = local_count
        _group_all_reduce(packed, process_group)

        count = int(packed[-1].item())  # host sync, as SyncBatchNorm's count gather
        if count < 2:
            raise ValueError(
                "SyncStochNorm needs more than one value per channel over the process group in "
                f"training, got {count} (this rank's input shape {tuple(x.shape)})"
            )
        batch_mean = packed[:channels] / count
        batch_var = (packed[channels:2 * channels] / count - batch_mean * batch_mean).clamp_min(0)
        batch_mean, batch_var = batch_mean.to(acc), batch_var.to(acc)
        if proposed_mask is None:
            mask = torch.ones(channels, dtype=torch.bool, device=x.device)
            save_mean, save_var = batch_mean, batch_var
        else:
            mask = packed[2 * channels:3 * channels] > 0.5
            save_mean = torch.where(mask, batch_mean, running_mean.to(acc))
            save_var = torch.where(mask, batch_var, running_var.to(acc))
        save_invstd = torch.rsqrt(save_var + eps)
        y = (_elemt(x, weight, bias, save_mean, save_invstd) if local_count > 0
             else torch.empty_like(x))

        ctx.save_for_backward(x, weight, mask, save_mean, save_invstd)
        ctx.count, ctx.process_group, ctx.backend = count, process_group, backend
        ctx.param_dtype = acc if weight is None else weight.dtype
        ctx.uses_batch_stats = bool(mask.any())  # equal on every rank: the mask is shared
        ctx.mark_non_differentiable(batch_mean, batch_var, mask)
        return y, batch_mean, batch_var, mask, count

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var, _grad_mask, _grad_count):
        x, weight, mask, save_mean, save_invstd = ctx.saved_tensors
        channels = x.shape[1]
        has_values = x.numel() > 0
        if has_values:
            sum_dy, sum_dy_xhat = _backward_reduce(grad_y, x, save_mean, save_invstd, ctx.backend)
        else:
            sum_dy, sum_dy_xhat = torch.zeros((2, channels), dtype=save_mean.dtype,
                                              device=x.device).unbind(0)
        grad_x = None
        if ctx.needs_input_grad[0]:
            group_dy, group_dy_xhat = sum_dy, sum_dy_xhat
            if ctx.uses_batch_stats:
                group_sums = torch.cat([sum_dy, sum_dy_xhat])
                _group_all_reduce(group_sums, ctx.process_group)
                group_dy, group_dy_xhat = group_sums[:channels], group_sums[channels:]
            grad_x = (_backward_elemt(grad_y, x, weight, mask, save_mean, save_invstd, group_dy,
                                      group_dy_xhat, ctx.count, ctx.backend)
                      if has_values else torch.zeros_like(x))
        grad_weight = sum_dy_xhat.to(ctx.param_dtype) if ctx.needs_input_grad[1] else None
        grad_bias = sum_dy.to(ctx.param_dtype) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None, None, None, None, None


def sync_stoch_norm(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    mask: Optional[Tensor],
    eps: float = 1e-5,
    process_group: Optional["dist.ProcessGroup"] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """StochNorm in training over the union of every rank's batch:
    (y, batch_mean, batch_var, mask_used, count).

    x is this rank's (N_r, C, *) slice; the statistics are those of all ranks' values together,
    count = Σ_r N_r·spatial values per channel, batch_var biased. ``mask`` (bool, (C,), True =
    batch statistics) is this rank's proposal: the group uses rank 0's, returned as mask_used, so
    each rank may pass its own draw. ``mask=None`` uses the batch statistics in every channel
    (synchronized BatchNorm); the running statistics may then be None. The running buffers are
    read, not updated. Every rank of ``process_group`` must call it; outside a distributed run it
    is StochNorm on x alone. Gradients reach x, weight and bias; weight/bias gradients are this
    rank's share (DDP sums them across ranks).
    """
    check_floating("x", x)
    if x.dim() < 2:
        raise ValueError(
            f"x must be (N, C, *) with at least 2 dimensions, got shape {tuple(x.shape)}"
        )
    if mask is not None and (running_mean is None or running_var is None):
        raise ValueError("running_mean and running_var are required when a mask is given")
    channels = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var), ("mask", mask)):
        if t is not None and t.shape != (channels,):
            raise ValueError(
                f"{name} must have shape ({channels},) to match x's channels, got {tuple(t.shape)}"
            )
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    check_same_device("x", x, weight=weight, bias=bias, running_mean=running_mean,
                      running_var=running_var, mask=mask)
    _check_group(process_group)
    x = x.contiguous(memory_format=memory_format_of(x))
    return _SyncStochNormFunction.apply(x, weight, bias, running_mean, running_var, mask,
                                        float(eps), process_group)


class SyncStochNorm(_StochNorm):
    """StochNorm over (N, C, *) input (2 to 5 dimensions) whose batch statistics span
    ``process_group`` (the default group when None).

    In training with running statistics inside a distributed group of more than one rank:
    - each rank draws s ~ Bernoulli(p)^C as StochNorm does (so every rank's generator advances the
      same way) and the group uses rank 0's draw, sent with the statistics in the same
      all_reduce. Rank 0's draw rather than a shared seed: DDP scripts usually seed each rank
      differently (augmentation, dropout), and a shared seed would silently break when they do;
    - μ_B, σ²_B are the biased mean and variance of all ranks' values per channel, from one
      all_reduce of the packed (Σx, Σx², mask, count); x̂, y and the gradients are StochNorm's with
      those statistics (see :func:`sync_stoch_norm`), the backward all-reducing Σdy and Σdy·x̂;
    - the running statistics update as StochNorm's with the group's statistics and the unbiased
      variance over the group's count, so every rank holds the same buffers afterwards.
    With ``track_running_stats=False`` it is synchronized BatchNorm in training (batch statistics
    of the group in every channel, as SyncBatchNorm). Outside a distributed run (torch.distributed
    not initialized, or one rank) and in evaluation it is StochNorm.

    The mask and running statistics stay identical across ranks only if they start identical
    (same checkpoint, or DDP's buffer broadcast at construction). Every rank must run the layer
    in every training step. On CUDA each forward reads the group count back to the host once.
    """

    _ndims = (2, 3, 4, 5)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, p=0.5, process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, p,
                         device=device, dtype=dtype)
        _check_group(process_group)
        self.process_group = process_group

    def forward(self, input):
        if not (self.training and is_distributed(self.process_group)):
            return super().forward(input)
        self._check_input_dim(input)
        proposed_mask = None
        if self.track_running_stats:
            factor = self._count_batch()
            proposed_mask = self._draw_mask(input.device)
        y, batch_mean, batch_var, _, count = sync_stoch_norm(
            input, self.weight, self.bias, self.running_mean, self.running_var, proposed_mask,
            self.eps, self.process_group,
        )
        if self.track_running_stats:
            update_running_stats(self.running_mean, self.running_var, batch_mean, batch_var,
                                 count, factor)
        return y

    @classmethod
    def convert_sync_stochnorm(cls, module: nn.Module, process_group=None) -> nn.Module:
        """Replace every StochNorm1d/2d/3d inside ``module`` (``module`` itself included) by a
        SyncStochNorm with the same arguments and p, copying affine parameters, running
        statistics, ``num_batches_tracked``, device, dtype, ``requires_grad`` and the
        training flag. Returns the converted module (a new object when ``module`` is a
        StochNorm); children are replaced in place."""
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        _check_group(process_group)
        if isinstance(module, _StochNorm) and not isinstance(module, SyncStochNorm):
            return rebuilt_as(module, cls, module.p, process_group)
        for name, child in module.named_children():
            setattr(module, name, cls.convert_sync_stochnorm(child, process_group))
        return module
