"""Route an op's forward/backward to the backend chosen for the tensors' device.

Every backend exposes the same functions with the same signatures:
- ``reference``: ``tltorch_ext.reference.<op>.<fn>`` (plain PyTorch),
- ``triton``: ``tltorch_ext.kernels.<op>.<fn>`` (Triton launchers),
- ``cpu`` / ``cuda``: ``torch.ops.tltorch_ext_C.<op>_<fn>`` (compiled C++ / CUDA, registered by
  ``tltorch_ext._C`` beside each kernel; the dispatcher picks the kernel for the tensors' device).
"""
from __future__ import annotations

import functools
import importlib

import torch

from .. import _backend, _ext

_PACKAGES = {"reference": "tltorch_ext.reference", "triton": "tltorch_ext.kernels"}


def implementation(op: str, fn: str, device: torch.device, backend: str | None = None):
    """The function ``fn`` of ``op`` in ``backend``, or in the backend resolved for ``device`` when
    it is None. Backward passes the backend its forward recorded (``resolve_for_backward``)."""
    backend = _backend.resolve(op, device, backend)
    if backend not in _PACKAGES:
        return _ext.compiled_op(op, fn)
    function = getattr(importlib.import_module(f"{_PACKAGES[backend]}.{op}"), fn)
    if backend == "triton" and device.type == "cuda":
        # Triton launches on the current device: make it the tensors' one (the C++ side has
        # its CUDAGuard).
        return functools.partial(_on_device, function, device)
    return function


def resolve_for_backward(op: str, device: torch.device) -> str:
    """The backend the forward of ``op`` just ran on, for its autograd context: backward runs on
    the same one even when it runs in autograd's worker thread, or after the backend changed."""
    return _backend.resolve(op, device)


def _on_device(function, device, *args):
    with torch.cuda.device(device):
        return function(*args)
