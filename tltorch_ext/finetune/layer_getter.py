"""Intermediate outputs of named submodules through temporary forward hooks."""
from __future__ import annotations

import difflib
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from ._common import check_module

__all__ = ["IntermediateLayerGetter"]


def resolve_layers(model: nn.Module, layer_names, argument: str = "return_layers"):
    """The submodules of ``model`` named by dotted paths such as ``'layer1.0.conv1'``.

    Raises TypeError for a bare string or a non-string entry and ValueError for a duplicate or an
    unknown name; the latter lists the closest existing names.
    """
    if isinstance(layer_names, str) or not isinstance(layer_names, Sequence):
        raise TypeError(
            f"{argument} must be a list or tuple of submodule names, "
            f"got {type(layer_names).__name__}"
        )
    if not layer_names:
        raise ValueError(f"{argument} must name at least one submodule")
    modules = dict(model.named_modules())
    resolved = []
    for name in layer_names:
        if not isinstance(name, str):
            raise TypeError(f"{argument} entries must be str, got {type(name).__name__}")
        if name not in modules or name == "":
            close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
            hint = f"; close matches: {close}" if close else ""
            raise ValueError(f"{argument}: the model has no submodule named {name!r}{hint}")
        resolved.append(modules[name])
    duplicates = sorted({n for n in layer_names if list(layer_names).count(n) > 1})
    if duplicates:
        raise ValueError(f"{argument} names a submodule twice: {duplicates}")
    return resolved


class _AllLayersCaptured(Exception):
    """Raised from a hook to skip the rest of the forward pass once nothing more is needed."""


class IntermediateLayerGetter:
    """Calls ``model`` and returns the outputs of the submodules named in ``return_layers``.

    ``getter(*args, **kwargs)`` → (OrderedDict name → output of that submodule, in the order of
    ``return_layers``; the model's output, or None when ``keep_output`` is False). Names are
    dotted paths as in ``model.named_modules()`` (``'layer1.0.conv1'``). Forward hooks exist only
    during a call and are removed afterwards, also when the model raises. A submodule that runs
    twice in one call reports its first output. With ``keep_output=False`` the forward pass stops
    as soon as every requested submodule has run, which saves the rest of the network.
    """

    def __init__(self, model: nn.Module, return_layers: Sequence[str], keep_output: bool = True):
        self.model = check_module(model, "model")
        self._modules = resolve_layers(model, return_layers)
        self.return_layers = tuple(return_layers)
        self.keep_output = bool(keep_output)

    def __call__(self, *args, **kwargs):
        captured: dict[str, object] = {}
        handles = []

        def make_hook(name):
            def hook(module, inputs, output):
                captured.setdefault(name, output)
                if not self.keep_output and len(captured) == len(self.return_layers):
                    raise _AllLayersCaptured

            return hook

        try:
            for name, module in zip(self.return_layers, self._modules):
                handles.append(module.register_forward_hook(make_hook(name)))
            try:
                output = self.model(*args, **kwargs)
            except _AllLayersCaptured:
                output = None
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name in self.return_layers if name not in captured]
        if missing:
            raise RuntimeError(f"these submodules did not run during the forward pass: {missing}")
        outputs = OrderedDict((name, captured[name]) for name in self.return_layers)
        return outputs, (output if self.keep_output else None)
