"""Small helpers shared by the fine-tuning modules (not public)."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm


def check_module(value, name: str) -> nn.Module:
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    return value


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a stateless model."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half inputs (their sums of squares overflow easily), float64 kept."""
    return torch.promote_types(dtype, torch.float32)


def unpack_batch(batch):
    """(inputs, targets or None) from a loader batch: a tensor, or a tuple/list (x, y, ...)."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) >= 1:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise TypeError(
        "data_loader must yield a tensor or a tuple/list (inputs, targets, ...), "
        f"got {type(batch).__name__}"
    )


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """Run the model in eval mode without gradients, then restore each submodule's mode."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for module, training in modes:
            module.training = training


def progress_bar(iterable: Iterable, progress: bool, desc: str):
    total = len(iterable) if hasattr(iterable, "__len__") else None
    return tqdm(iterable, total=total, desc=desc, disable=not progress, leave=False)


def collect_outputs(
    fn: Callable[[torch.Tensor], torch.Tensor],
    model: nn.Module,
    data_loader: Iterable,
    device,
    progress: bool,
    desc: str,
):
    """fn(inputs) over the whole loader in eval mode, without gradients.

    Returns (outputs, targets), concatenated over the batches on the CPU (targets None when the
    loader yields no targets); large data sets do not fill device memory.
    """
    device = model_device(model) if device is None else torch.device(device)
    outputs, targets = [], []
    with evaluating(model):
        for batch in progress_bar(data_loader, progress, desc):
            inputs, target = unpack_batch(batch)
            out = fn(inputs.to(device))
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"the model must return a tensor here, got {type(out).__name__}")
            outputs.append(out.detach().cpu())
            if target is not None:
                targets.append(torch.as_tensor(target).cpu())
    if not outputs:
        raise ValueError("data_loader yielded no batch")
    return torch.cat(outputs), (torch.cat(targets) if len(targets) == len(outputs) else None)


class GlobalAvgPool(nn.Module):
    """Mean over every dimension after the channel one: (B, C, *S) → (B, C); (B, C) passes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).mean(-1) if x.dim() > 2 else x


def parameter_groups(modules_and_lrs) -> list[dict]:
    """Optimizer groups [{'params', 'lr'}] for (module, lr) pairs; parameterless ones left out."""
    groups = []
    for module, lr in modules_and_lrs:
        params = list(module.parameters())
        if params:
            groups.append({"params": params, "lr": lr})
    return groups


def features_dim_of(backbone: nn.Module, features_dim, fallback_head=None) -> int:
    """The backbone's pooled feature size: given, else backbone.out_features, else the
    in_features of an existing nn.Linear head that reads those features."""
    if features_dim is None:
        features_dim = getattr(backbone, "out_features", None)
    if features_dim is None and isinstance(fallback_head, nn.Linear):
        features_dim = fallback_head.in_features
    if not isinstance(features_dim, int) or isinstance(features_dim, bool) or features_dim <= 0:
        raise ValueError(
            "cannot tell the backbone's feature size: give the backbone an int `out_features` "
            f"attribute or pass features_dim (a positive int); got {features_dim!r}"
        )
    return features_dim
