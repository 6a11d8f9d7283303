"""Backend selection for the hot-path ops.

Backends: ``reference`` (plain PyTorch), ``triton`` (kernels in ``tltorch_ext.kernels``; on CPU
tensors only under ``TRITON_INTERPRET=1``), ``cpu`` and ``cuda`` (the compiled ``_C`` module), and
``auto``, which picks per op and device type from the order in ``auto_backends.json``: the fastest
backend measured by ``tltorch-ext bench`` first (see benchmarks/results/). The choice is made when
an op runs, so it also holds inside ``torch.compile``d code.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import json
import os
from pathlib import Path

import torch

from . import _ext

BACKENDS = ("auto", "reference", "triton", "cpu", "cuda")
AUTO_TABLE = Path(__file__).with_name("auto_backends.json")
# Order used where auto_backends.json has no measured entry for an op and device type.
_DEFAULT_AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


# The process-wide choice (a plain set_backend call, or TLTORCH_EXT_BACKEND), and the choice of
# the current thread/task inside a ``with set_backend(...)`` block (None outside any block).
_process_backend = _check_name(os.environ.get("TLTORCH_EXT_BACKEND", "auto"))
_scoped = contextvars.ContextVar("tltorch_ext_backend", default=None)


def _as_device_type(device) -> str:
    if isinstance(device, torch.Tensor):
        device = device.device
    return torch.device(device).type


@functools.lru_cache(maxsize=None)
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_usable(device_type: str) -> bool:
    if not _triton_installed():
        return False
    if device_type == "cuda":
        return torch.cuda.is_available()
    # On CPU tensors Triton runs only in its interpreter (slow: for tests).
    return device_type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def available_backends(device="cpu", op: str | None = None) -> list[str]:
    """Concrete backends that can run on ``device`` (a device, its name, or a tensor); with
    ``op``, only those whose build has that op (a stale ``_C`` may predate it)."""
    device_type = _as_device_type(device)
    found = ["reference"]
    if _triton_usable(device_type):
        found.append("triton")
    if device_type == "cpu" and _ext.has_cpu():
        found.append("cpu")
    if device_type == "cuda" and _ext.has_cuda() and torch.cuda.is_available():
        found.append("cuda")
    if op is not None:
        found = [b for b in found if b not in ("cpu", "cuda") or _ext.has_op(op, b)]
    return found


def get_backend() -> str:
    """The backend name in force here: the innermost ``with set_backend(...)`` of this thread,
    else the process-wide one (``auto`` unless set)."""
    scoped = _scoped.get()
    return _process_backend if scoped is None else scoped


class _Scope(contextlib.AbstractContextManager):
    """What set_backend returns: entering it turns the process-wide change just made back and
    makes the choice this thread's (and its context's) for the block."""

    def __init__(self, name: str, previous: str):
        self._name, self._previous, self._token = name, previous, None

    def __enter__(self):
        global _process_backend
        _process_backend = self._previous
        self._token = _scoped.set(self._name)
        return self

    def __exit__(self, *exc):
        _scoped.reset(self._token)
        return False


def set_backend(name: str) -> contextlib.AbstractContextManager:
    """Select the backend of every hot-path op.

    As a plain call (``set_backend("triton")``) the choice is process-wide: every thread,
    autograd's worker threads included, sees it. As a context manager
    (``with set_backend("reference"): ...``) it holds for this thread (and context) only, inside
    the block, and the previous choice is back on exit; other threads keep theirs. Backward
    always runs on the backend its forward ran on, whichever thread runs it. A backend that
    cannot run on any device of this machine is refused at once.
    """
    global _process_backend
    _check_name(name)
    if name != "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        if not any(name in available_backends(d) for d in devices):
            raise RuntimeError(
                f"backend {name!r} is not available on this machine; available: "
                f"{ {d: available_backends(d) for d in devices} }"
            )
    previous, _process_backend = _process_backend, name
    return _Scope(name, previous)


@functools.lru_cache(maxsize=None)
def _auto_table() -> dict:
    try:
        return json.loads(AUTO_TABLE.read_text())
    except (OSError, ValueError):
        return {}


def record_auto_orders(orders: dict[str, dict[str, list[str]]]) -> None:
    """Merge measured orders {op: {device_type: [fastest backend first, ...]}} into
    ``auto_backends.json`` (what ``tltorch-ext bench --update-auto`` records)."""
    table = dict(_auto_table())
    for op, per_device in orders.items():
        table[op] = {**table.get(op, {}), **per_device}
    AUTO_TABLE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    _auto_table.cache_clear()


def auto_order(op: str, device_type: str) -> tuple[str, ...]:
    """Backends ``auto`` tries for ``op`` on ``device_type``, fastest measured first."""
    measured = _auto_table().get(op, {}).get(device_type)
    return tuple(measured or _DEFAULT_AUTO_ORDER.get(device_type, ("reference",)))


def resolve(op: str, device, name: str | None = None) -> str:
    """The concrete backend that runs ``op`` for tensors on ``device``: ``name``'s, or the one in
    force when it is None."""
    device_type = _as_device_type(device)
    name = get_backend() if name is None else _check_name(name)
    available = available_backends(device_type, op)
    if name == "auto":
        return next((b for b in auto_order(op, device_type) if b in available), "reference")
    if name not in available:
        raise RuntimeError(
            f"tltorch_ext backend {name!r} cannot run {op} on {device_type} tensors; "
            f"available there: {available}"
        )
    return name
