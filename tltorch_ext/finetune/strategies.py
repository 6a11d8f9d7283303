"""Fine-tuning strategies (docs/api_finetune.md): feature extraction, gradual unfreezing,
layer-wise learning rates, a freezing policy by data-set size, forgetting measurement and head replacement.

A model's *blocks* are its top-level children that hold parameters, in definition order (taken
as the forward order), the last one being the head; parameters registered directly on the model
(such as a ViT's position embedding) form a block "(root)" placed first, farthest from the head.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .._tensors import positive_int
from ._common import check_module, collect_outputs
from .layer_getter import IntermediateLayerGetter
from .lwf import source_logits

__all__ = [
    "FeatureExtractor",
    "extract_features",
    "GradualUnfreezing",
    "layerwise_lr_groups",
    "freeze_policy",
    "forgetting",
    "replace_head",
]

ROOT_BLOCK = "(root)"


def _blocks(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """[(block name, its parameters)] from the input side to the head."""
    blocks = []
    root = list(model.parameters(recurse=False))
    if root:
        blocks.append((ROOT_BLOCK, root))
    for name, child in model.named_children():
        params = list(child.parameters())
        if params:
            blocks.append((name, params))
    if not blocks:
        raise ValueError("model has no parameters")
    return blocks


class FeatureExtractor(nn.Module):
    """forward(*inputs) → the output of submodule ``layer_name`` (a dotted path such as
    ``'layer4'``) for those inputs, read with a forward hook; the rest of the model after that
    layer is not run. An unknown name is a ValueError listing close matches."""

    def __init__(self, model: nn.Module, layer_name: str):
        super().__init__()
        if not isinstance(layer_name, str):
            raise TypeError(f"layer_name must be a str, got {type(layer_name).__name__}")
        self.model = check_module(model, "model")
        self.layer_name = layer_name
        self._getter = IntermediateLayerGetter(model, [layer_name], keep_output=False)

    def forward(self, *args, **kwargs):
        features, _ = self._getter(*args, **kwargs)
        return features[self.layer_name]


def extract_features(
    model: nn.Module,
    loader: Iterable,
    layer_name: str | None = None,
    device=None,
    progress: bool = False,
):
    """Features of every sample of ``loader``: (features (N, ...), labels (N,) or None), on the CPU.

    The features are the model's output, or the output of submodule ``layer_name`` when given.
    The model runs in eval mode without gradients (modes restored afterwards) on ``device``
    (default: the model's device); the loader yields inputs or (inputs, labels, ...).
    """
    check_module(model, "model")
    forward = model if layer_name is None else FeatureExtractor(model, layer_name)
    return collect_outputs(forward, model, loader, device, progress, "extracting features")


class GradualUnfreezing:
    """Unfreezes the model's blocks one by one from the head backwards.

    At construction every block but the last (the head) is frozen (``requires_grad=False``). Call
    :meth:`step` once at the end of each epoch: after every ``epochs_per_stage`` epochs one more
    block becomes trainable. Its parameters that the optimizer does not hold yet are added as one
    new parameter group, so the existing groups and their state (momentum, Adam moments, step
    counts) are kept. The new group's learning rate is ``lr``, or by default the current lr of the
    optimizer's last group. (An lr scheduler created earlier does not know groups added later.)
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        epochs_per_stage: int = 1,
        lr: float | None = None,
    ):
        check_module(model, "model")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        epochs_per_stage = positive_int("epochs_per_stage", epochs_per_stage)
        if lr is not None and not (isinstance(lr, (int, float)) and lr >= 0):
            raise ValueError(f"lr must be a non-negative number or None, got {lr!r}")
        self.model, self.optimizer = model, optimizer
        self.epochs_per_stage, self.lr = epochs_per_stage, lr
        self.blocks = _blocks(model)
        self.epoch = 0
        self.num_unfrozen = 0
        for _, params in self.blocks:
            for param in params:
                param.requires_grad_(False)
        self._unfreeze_up_to(1)

    @property
    def unfrozen_blocks(self) -> list[str]:
        """Names of the trainable blocks, head first."""
        return [name for name, _ in self.blocks[::-1][: self.num_unfrozen]]

    def _unfreeze_up_to(self, count: int) -> list[str]:
        newly = []
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        while self.num_unfrozen < min(count, len(self.blocks)):
            name, params = self.blocks[len(self.blocks) - 1 - self.num_unfrozen]
            for param in params:
                param.requires_grad_(True)
            new_params = [p for p in params if id(p) not in held]
            if new_params:
                lr = self.lr if self.lr is not None else self.optimizer.param_groups[-1]["lr"]
                self.optimizer.add_param_group({"params": new_params, "lr": lr})
            self.num_unfrozen += 1
            newly.append(name)
        return newly

    def step(self) -> list[str]:
        """End of an epoch: unfreezes what the schedule asks for; returns those blocks' names."""
        self.epoch += 1
        return self._unfreeze_up_to(1 + self.epoch // self.epochs_per_stage)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        """Restores the epoch count and unfreezes accordingly (load the optimizer's state after
        this, so that its groups match)."""
        self.epoch = int(state["epoch"])
        self._unfreeze_up_to(1 + self.epoch // self.epochs_per_stage)


def layerwise_lr_groups(model: nn.Module, base_lr: float, decay: float) -> list[dict]:
    """One optimizer group per block: lr = base_lr · decay^depth, depth 0 for the head and
    increasing towards the input. Frozen parameters are left out (and blocks left empty);
    each group also carries its block ``name``."""
    check_module(model, "model")
    for argument, value in (("base_lr", base_lr), ("decay", decay)):
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{argument} must be a non-negative number, got {value!r}")
    groups = []
    for depth, (name, params) in enumerate(reversed(_blocks(model))):
        trainable = [p for p in params if p.requires_grad]
        if trainable:
            groups.append({"params": trainable, "lr": base_lr * decay**depth, "name": name})
    return groups[::-1]


FREEZE_POLICIES = ("feature_extraction", "last_block", "full")


def freeze_policy(dataset_size: int, model: nn.Module | None = None, small: int = 1_000,
                  large: int = 10_000) -> str:
    """How much of a pre-trained model to train for a target set of ``dataset_size`` samples.

    Fewer than ``small`` samples: 'feature_extraction' (only the head trains); fewer than
    ``large``: 'last_block' (the head and the block before it); otherwise 'full'. With ``model``,
    its blocks' ``requires_grad`` are set to match. Returns the policy's name.
    """
    if not isinstance(dataset_size, int) or isinstance(dataset_size, bool) or dataset_size < 0:
        raise ValueError(f"dataset_size must be a non-negative int, got {dataset_size!r}")
    if not (isinstance(small, int) and isinstance(large, int) and 0 <= small <= large):
        raise ValueError(f"need ints 0 <= small <= large, got small={small!r}, large={large!r}")
    policy_index = 0 if dataset_size < small else 1 if dataset_size < large else 2
    if model is not None:
        blocks = _blocks(check_module(model, "model"))
        num_trainable = (1, 2, len(blocks))[policy_index]  # counted from the head
        for index, (_, params) in enumerate(blocks):
            for param in params:
                param.requires_grad_(index >= len(blocks) - num_trainable)
    return FREEZE_POLICIES[policy_index]


def _accuracy(logits: torch.Tensor, labels: torch.Tensor | None, which: str) -> float:
    if labels is None:
        raise ValueError(f"{which} must yield (inputs, labels)")
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"{which}: expected logits (N, classes) and labels (N,), got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    return 100.0 * (logits.argmax(1) == labels).double().mean().item()


def forgetting(
    model: nn.Module,
    source_loader: Iterable,
    target_loader: Iterable,
    source_reference: float | nn.Module | None = None,
    device=None,
    progress: bool = False,
) -> dict:
    """Accuracy (percent) of a fine-tuned model on the source and the target task, and the drop
    on the source task.

    Source predictions come from the source head of an lwf/co_tuning ``Classifier`` (its
    ``forward_source``), otherwise from ``model(x)``; target predictions from ``model(x)`` in eval
    mode. ``source_reference`` is the source accuracy before fine-tuning (percent) or the
    pre-trained model itself (evaluated on ``source_loader``). Returns {'source_accuracy',
    'target_accuracy', 'source_drop'}: source_drop = reference − source_accuracy, None without a
    reference.
    """
    check_module(model, "model")
    source_outputs = source_logits(model, source_loader, device, progress, "source task")
    source = _accuracy(*source_outputs, "source_loader")
    target_outputs = collect_outputs(model, model, target_loader, device, progress, "target task")
    target = _accuracy(*target_outputs, "target_loader")
    if isinstance(source_reference, nn.Module):
        reference_outputs = source_logits(
            source_reference, source_loader, device, progress, "reference"
        )
        source_reference = _accuracy(*reference_outputs, "source_loader")
    elif source_reference is not None and not isinstance(source_reference, (int, float)):
        raise TypeError("source_reference must be an accuracy in percent, a model or None, "
                        f"got {type(source_reference).__name__}")
    drop = None if source_reference is None else float(source_reference) - source
    return {"source_accuracy": source, "target_accuracy": target, "source_drop": drop}


HEAD_ATTRIBUTES = ("fc", "classifier", "head", "heads")


def _is_replaceable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (
        isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)  # SqueezeNet's head
    )


def _new_like(layer: nn.Module, num_classes: int) -> nn.Module:
    factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features, num_classes, bias=bias, **factory)
    return nn.Conv2d(layer.in_channels, num_classes, 1, bias=bias, **factory)


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Gives the model a freshly initialized classification layer with ``num_classes`` outputs.

    A model with a ``reset_classifier`` method (timm) is reset through it. Otherwise the head is
    the first of the attributes ``fc``, ``classifier``, ``head``, ``heads`` that the model has: an
    nn.Linear is replaced by a new one with the same in_features, bias, device and dtype; a
    container (nn.Sequential, timm's ClassifierHead, torchvision ViT's ``heads``) has its last
    nn.Linear (or 1×1 Conv2d, as in SqueezeNet) replaced. A ``num_classes`` attribute of the model
    is updated. Returns the model (modified in place).
    """
    check_module(model, "model")
    num_classes = positive_int("num_classes", num_classes)
    if callable(getattr(model, "reset_classifier", None)):
        model.reset_classifier(num_classes)
        return model
    present = [a for a in HEAD_ATTRIBUTES if isinstance(getattr(model, a, None), nn.Module)]
    if not present:
        raise ValueError(f"model has no head module among the attributes {HEAD_ATTRIBUTES}")
    attribute = present[0]
    head = getattr(model, attribute)
    if _is_replaceable(head):
        setattr(model, attribute, _new_like(head, num_classes))
    else:
        candidates = [
            name for name, module in head.named_modules() if name and _is_replaceable(module)
        ]
        if not candidates:
            raise ValueError(f"model.{attribute} ({type(head).__name__}) holds no nn.Linear or 1x1 "
                             "nn.Conv2d to replace")
        parent_name, _, child_name = candidates[-1].rpartition(".")
        parent = head.get_submodule(parent_name) if parent_name else head
        setattr(parent, child_name, _new_like(getattr(parent, child_name), num_classes))
    if isinstance(getattr(model, "num_classes", None), int):
        model.num_classes = num_classes
    return model
