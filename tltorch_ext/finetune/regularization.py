"""Parameter and feature-map regularizers for fine-tuning: L2, L2-SP and DELTA
(docs/api_finetune.md).

Every loss accumulates in float32 for float16/bfloat16 tensors (float64 stays float64) and is
returned in that accumulation dtype: a half-precision sum of squares overflows easily.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._tensors import positive_int, real_number
from ._common import (
    accumulation_dtype,
    check_module,
    evaluating,
    model_device,
    progress_bar,
    unpack_batch,
)
from .layer_getter import IntermediateLayerGetter, resolve_layers

__all__ = [
    "L2Regularization",
    "SPRegularization",
    "BehavioralRegularization",
    "AttentionBehavioralRegularization",
    "compute_channel_attention",
]


def _widened(x: torch.Tensor) -> torch.Tensor:
    return x.to(accumulation_dtype(x.dtype))


def _half_squared_norm(x: torch.Tensor) -> torch.Tensor:
    """½‖x‖² accumulated in float32 or wider."""
    return 0.5 * _widened(x).square().sum()


def _zero_like_model(model: nn.Module) -> torch.Tensor:
    return torch.zeros((), device=model_device(model))


class L2Regularization(nn.Module):
    """Weight decay as a loss: forward() → ½ Σ_w ‖w‖² over the model's trainable parameters.

    "Trainable" is read at each call (``requires_grad``), so parameters frozen or unfrozen later
    are counted accordingly. The model is referenced, not registered: the regularizer's
    ``state_dict`` and ``.to()`` do not touch it.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        check_module(model, "model")
        if next(model.parameters(), None) is None:
            raise ValueError("model has no parameters to regularize")
        object.__setattr__(self, "model", model)

    def forward(self) -> torch.Tensor:
        terms = [_half_squared_norm(p) for p in self.model.parameters() if p.requires_grad]
        return sum(terms) if terms else _zero_like_model(self.model)


class SPRegularization(nn.Module):
    """L2-SP: forward() → ½ Σ ‖w − w⁰‖² towards the starting point w⁰ of the source model.

    At construction w⁰ is copied (detached) from ``source_model`` for every parameter of
    ``target_model`` with the same name and shape; the copies are buffers of this module (so
    ``.to(device)`` and ``state_dict`` carry them). The sum runs over the target's trainable
    parameters that have a w⁰; the others, such as a newly added head, are skipped.
    ``source_model`` may be ``target_model`` itself before fine-tuning starts.
    """

    def __init__(self, source_model: nn.Module, target_model: nn.Module):
        super().__init__()
        check_module(source_model, "source_model")
        check_module(target_model, "target_model")
        source = dict(source_model.named_parameters())
        self._shared_names: list[str] = []
        for name, param in target_model.named_parameters():
            start = source.get(name)
            if start is not None and start.shape == param.shape:
                # buffer names cannot hold dots, so the parameter names are kept alongside
                self.register_buffer(f"w0_{len(self._shared_names)}", start.detach().clone())
                self._shared_names.append(name)
        if not self._shared_names:
            raise ValueError(
                "source_model and target_model share no parameter with the same name and shape"
            )
        object.__setattr__(self, "target_model", target_model)

    def forward(self) -> torch.Tensor:
        params = dict(self.target_model.named_parameters())
        terms = []
        for index, name in enumerate(self._shared_names):
            param = params.get(name)
            if param is None or not param.requires_grad:
                continue
            start = getattr(self, f"w0_{index}")
            if start.device != param.device:
                raise ValueError(
                    f"the starting point of {name!r} is on {start.device} but the parameter is on "
                    f"{param.device}: move the regularizer with .to({str(param.device)!r})"
                )
            terms.append(_half_squared_norm(_widened(param) - start))
        return sum(terms) if terms else _zero_like_model(self.target_model)


def _paired_feature_maps(source: Mapping, target: Mapping):
    """[(name, detached source map, target map)], widened to float32 or more, after checking
    that the two dicts match."""
    for argument, value in (("layer_outputs_source", source), ("layer_outputs_target", target)):
        if not isinstance(value, Mapping):
            raise TypeError(
                f"{argument} must be a dict name → feature map, got {type(value).__name__}"
            )
    if not source:
        raise ValueError("layer_outputs_source and layer_outputs_target must not be empty")
    if list(source) != list(target):
        raise ValueError(
            "layer_outputs_source and layer_outputs_target must have the same names in the same "
            f"order, got {list(source)} and {list(target)}"
        )
    pairs = []
    for name in source:
        fm_source, fm_target = source[name], target[name]
        if not isinstance(fm_source, torch.Tensor) or not isinstance(fm_target, torch.Tensor):
            raise TypeError(f"feature maps of layer {name!r} must be tensors")
        if fm_source.shape != fm_target.shape:
            raise ValueError(
                f"layer {name!r}: source map has shape {tuple(fm_source.shape)} but target map has "
                f"shape {tuple(fm_target.shape)}"
            )
        pairs.append((name, _widened(fm_source.detach()), _widened(fm_target)))
    return pairs


class BehavioralRegularization(nn.Module):
    """DELTA without attention: forward(source, target) → Σ_j ½ ‖FM_j(target) − FM̄_j(source)‖².

    ``source`` and ``target`` are dicts name → feature map with the same names in the same order
    (as returned by ``IntermediateLayerGetter``); the source maps carry no gradient.
    """

    def forward(self, layer_outputs_source: Mapping, layer_outputs_target: Mapping) -> torch.Tensor:
        pairs = _paired_feature_maps(layer_outputs_source, layer_outputs_target)
        return sum(_half_squared_norm(t - s) for _, s, t in pairs)


class AttentionBehavioralRegularization(nn.Module):
    """DELTA: feature-map distance weighted by channel attention.

    ``channel_attention`` holds one weight vector W_j of shape (C_j,) per layer (as returned by
    :func:`compute_channel_attention`); they are buffers, moved to the maps' device if needed.
    For layer j with maps (b, c, *spatial), S = Π spatial (h·w for images), and
    d_bc = ‖FM_j(target)_bc − FM̄_j(source)_bc‖² over the spatial positions,
    forward(source, target) → Σ_j ½ Σ_{b,c} c · W_j[c] · d_bc / S.
    """

    def __init__(self, channel_attention: Sequence[torch.Tensor]):
        super().__init__()
        is_list = isinstance(channel_attention, Sequence)
        if isinstance(channel_attention, torch.Tensor) or not is_list:
            raise TypeError("channel_attention must be a list with one (C_j,) tensor per layer")
        if not channel_attention:
            raise ValueError("channel_attention must hold at least one layer's weights")
        for j, weights in enumerate(channel_attention):
            if not isinstance(weights, torch.Tensor) or weights.dim() != 1:
                raise ValueError(
                    f"channel_attention[{j}] must be a 1-D tensor (C_j,), got "
                    f"{getattr(weights, 'shape', type(weights).__name__)}"
                )
            self.register_buffer(f"channel_attention_{j}", weights.detach().clone())
        self.num_layers = len(channel_attention)

    def forward(self, layer_outputs_source: Mapping, layer_outputs_target: Mapping) -> torch.Tensor:
        pairs = _paired_feature_maps(layer_outputs_source, layer_outputs_target)
        if len(pairs) != self.num_layers:
            raise ValueError(
                f"expected feature maps of {self.num_layers} layers (one per channel_attention "
                f"entry), got {len(pairs)}"
            )
        terms = []
        for j, (name, fm_source, fm_target) in enumerate(pairs):
            if fm_target.dim() < 2:
                raise ValueError(
                    f"layer {name!r}: maps must be (b, c, ...), got {tuple(fm_target.shape)}"
                )
            channels = fm_target.shape[1]
            weights = getattr(self, f"channel_attention_{j}")
            if weights.numel() != channels:
                raise ValueError(
                    f"layer {name!r} has {channels} channels but channel_attention[{j}] has "
                    f"{weights.numel()} entries"
                )
            batch, spatial = fm_target.shape[0], math.prod(fm_target.shape[2:])
            distance = (fm_target - fm_source).reshape(batch, channels, spatial).square().sum(-1)
            weights = weights.to(device=distance.device, dtype=distance.dtype)
            terms.append(0.5 * channels * (distance * weights).sum() / spatial)  # distance: d_bc
        return sum(terms)


def _per_sample_cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The default criterion, with class labels checked (cross_entropy's own error is an
    IndexError without the argument's name)."""
    if not target.is_floating_point() and target.numel():
        low, high, classes = int(target.min()), int(target.max()), output.shape[1]
        if low < 0 or high >= classes:
            raise ValueError(
                f"the data_loader's targets must be class labels in [0, {classes}) for the "
                f"model's {classes} outputs, got values in [{low}, {high}]"
            )
    return F.cross_entropy(output, target, reduction="none")


def _per_sample_loss(criterion, output, target, batch_size: int) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"the model must return a tensor of logits in eval mode, got {type(output).__name__}"
        )
    loss = criterion(output, target)
    if not isinstance(loss, torch.Tensor) or loss.shape != (batch_size,):
        raise ValueError(
            f"criterion must return per-sample losses of shape ({batch_size},), got "
            f"{getattr(loss, 'shape', type(loss).__name__)}; use reduction='none'"
        )
    return _widened(loss)


def _check_channel_output(name: str, output) -> int:
    """The channel count C of a layer output (b, C, ...)."""
    if not isinstance(output, torch.Tensor) or output.dim() < 2:
        raise TypeError(
            f"layer {name!r} must output one tensor (b, C, ...), got "
            f"{getattr(output, 'shape', type(output).__name__)}"
        )
    return output.shape[1]


def compute_channel_attention(
    model: nn.Module,
    layer_names: Sequence[str],
    data_loader: Iterable,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    device=None,
    temperature: float = 5.0,
    channels_per_pass: int = 16,
    progress: bool = True,
) -> list[torch.Tensor]:
    """DELTA's channel attention: how much the loss rises when a channel is switched off.

    For each layer j in ``layer_names`` and each channel c of its output, r_jc is the rise of the
    per-sample loss ``criterion(model(x), y)`` (cross-entropy by default; it must return one loss
    per sample) when that channel's output map is set to zero, averaged over every sample of
    ``data_loader`` (the mean over batches when the batches have equal sizes). Then
    W_j = softmax_c(z_jc / temperature), z_j the rises z-scored over the channels of the layer
    (population std; uniform weights when every channel has the same rise).

    The model runs in eval mode without gradients (its modes are restored afterwards).
    ``channels_per_pass`` channels are tested in one forward pass on the batch repeated that many
    times, so peak memory grows with it. ``progress=False`` turns the tqdm bar off.
    Returns one float32 tensor (C_j,) per layer, on the CPU.
    """
    check_module(model, "model")
    resolve_layers(model, layer_names, "layer_names")
    temperature = real_number("temperature", temperature, positive=True)
    channels_per_pass = positive_int("channels_per_pass", channels_per_pass)
    if criterion is None:
        criterion = _per_sample_cross_entropy
    device = model_device(model) if device is None else torch.device(device)
    getter = IntermediateLayerGetter(model, layer_names)
    modules = dict(model.named_modules())
    rise_sums: list[torch.Tensor | None] = [None] * len(layer_names)
    num_samples = 0
    with evaluating(model):
        for batch in progress_bar(data_loader, progress, "channel attention"):
            inputs, targets = unpack_batch(batch)
            if targets is None:
                raise ValueError("data_loader must yield (inputs, targets) to measure the loss")
            inputs, targets = inputs.to(device), torch.as_tensor(targets).to(device)
            batch_size = inputs.shape[0]
            feature_maps, output = getter(inputs)
            base_loss = _per_sample_loss(criterion, output, targets, batch_size)
            for j, name in enumerate(layer_names):
                channels = _check_channel_output(name, feature_maps[name])
                if rise_sums[j] is None:
                    rise_sums[j] = base_loss.new_zeros(channels)
                for start in range(0, channels, channels_per_pass):
                    count = min(channels_per_pass, channels - start)
                    loss = _loss_with_channels_zeroed(
                        model, name, modules[name], criterion, inputs, targets, start, count
                    )
                    rise_sums[j][start : start + count] += (loss - base_loss).sum(1)
            num_samples += batch_size
    if num_samples == 0:
        raise ValueError("data_loader yielded no batch")
    attention = []
    for rise_sum in rise_sums:
        rise = rise_sum / num_samples
        spread = rise.std(unbiased=False)
        zscore = (rise - rise.mean()) / spread if spread > 1e-12 else torch.zeros_like(rise)
        attention.append(torch.softmax(zscore / temperature, dim=0).float().cpu())
    return attention


def _loss_with_channels_zeroed(model, name, module, criterion, inputs, targets, start, count):
    """Per-sample losses (count, b): replica i of the batch runs with channel start + i of
    submodule ``name`` zeroed."""
    batch_size = inputs.shape[0]

    def zero_channels(mod, args, output):
        channels = _check_channel_output(name, output)
        keep = torch.ones(count, channels, dtype=output.dtype, device=output.device)
        replica = torch.arange(count, device=output.device)
        keep[replica, replica + start] = 0
        grouped = output.reshape(count, batch_size, *output.shape[1:])
        mask = keep.view(count, 1, channels, *([1] * (output.dim() - 2)))
        return (grouped * mask).reshape(output.shape)

    handle = module.register_forward_hook(zero_channels)
    try:
        output = model(inputs.repeat(count, *([1] * (inputs.dim() - 1))))
    finally:
        handle.remove()
    repeated_targets = targets.repeat(count, *([1] * (targets.dim() - 1)))
    loss = _per_sample_loss(criterion, output, repeated_targets, count * batch_size)
    return loss.view(count, batch_size)
