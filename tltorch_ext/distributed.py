"""Helpers for data-parallel training (docs/api_stochnorm.md, DDP-safe state).

Under ``torch.nn.parallel.DistributedDataParallel`` every rank sees a different slice of the
batch. Parameters stay equal because DDP averages their gradients, but state that a module
updates from the batch itself — CRD memory banks, Bi-Tuning key queues, the buffers an EMA teacher
copies — drifts apart unless every rank applies the same update. The rule this module supports:
feed such updates the batch of the whole group, ``all_gather_batch(keys)`` and
``all_gather_batch(indices)``, so that each rank performs the identical update.

Both helpers work with the gloo (CPU) and NCCL (CUDA) backends and reduce to the identity outside
a process group of more than one rank, so the same training script runs on one process.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_gather_batch", "is_distributed"]


def _check_group(process_group) -> None:
    if process_group is not None and not (
        dist.is_available() and isinstance(process_group, dist.ProcessGroup)
    ):
        raise TypeError(
            f"process_group must be None or a torch.distributed.ProcessGroup, "
            f"got {type(process_group).__name__}"
        )


def is_distributed(process_group: Optional["dist.ProcessGroup"] = None) -> bool:
    """True when torch.distributed is initialized and ``process_group`` (the default group when
    None) has more than one rank: the condition under which batch-dependent state must be
    synchronized."""
    _check_group(process_group)
    return (
        dist.is_available()
        and dist.is_initialized()
        and dist.get_world_size(process_group) > 1
    )


class _AllGatherBatch(torch.autograd.Function):
    """Concatenation along dim 0 of every rank's rows, in rank order.

    Backward: each rank's loss may depend on every rank's rows, so the gradient of this rank's
    rows is Σ_r ∂L_r/∂rows — the sum over ranks of the gathered gradient, sliced to our rows.
    With DDP's gradient averaging this yields the gradient of the mean of the ranks' losses.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor, process_group) -> Tensor:
        world = dist.get_world_size(process_group)
        rank = dist.get_rank(process_group)
        # Ranks may hold different batch sizes (the last batch of an epoch): share the sizes,
        # gather rows padded to the largest, then drop the padding.
        size = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
        sizes = [torch.empty_like(size) for _ in range(world)]
        dist.all_gather(sizes, size, group=process_group)
        sizes = [int(s) for s in sizes]
        padded = tensor.new_zeros((max(sizes),) + tuple(tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        chunks = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(chunks, padded, group=process_group)
        ctx.process_group = process_group
        ctx.rows = (sum(sizes[:rank]), sizes[rank])
        return torch.cat([chunk[:n] for chunk, n in zip(chunks, sizes)])

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.process_group)
        start, count = ctx.rows
        return grad[start:start + count], None


def all_gather_batch(tensor: Tensor, process_group: Optional["dist.ProcessGroup"] = None) -> Tensor:
    """The rows of every rank's ``tensor`` concatenated along dimension 0 in rank order:
    out = cat(tensor_rank0, tensor_rank1, …), shape (Σ_r B_r, *rest).

    ``tensor`` is (B, *rest) with the same rest, dtype and device on every rank; B may differ
    between ranks. Every rank of ``process_group`` must call it. Returns ``tensor`` itself when
    not distributed (see :func:`is_distributed`). Differentiable: the gradient reaching this rank's
    rows is the sum over ranks of the gradient of the gathered tensor, so a loss computed on the
    gathered batch trains correctly under DDP. Integer tensors (example indices) gather too.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() < 1:
        raise ValueError(
            f"tensor must have a batch dimension (shape (B, ...)), got shape {tuple(tensor.shape)}"
        )
    if not is_distributed(process_group):
        return tensor
    return _AllGatherBatch.apply(tensor.contiguous(), process_group)
