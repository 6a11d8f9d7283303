"""Backend selection for the hot-path ops.

Backends: ``reference`` (plain PyTorch), ``triton`` (kernels in ``tltorch_ext.kernels``; on CPU
tensors only under ``TRITON_INTERPRET=1``), ``cpu`` and ``cuda`` (the compiled ``_C`` module), and
``auto``, which picks per op and device type from a measured order: the fastest backend measured
by ``tltorch-ext bench`` first (see benchmarks/results/), from the packaged ``auto_backends.json``
and, over it, the user's own measurements (``--update-auto``, in the user cache). The choice is
made when an op runs, so it also holds inside ``torch.compile``d code; ``explain_backend`` says
what runs and why.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import json
import os
import pkgutil
from pathlib import Path

import torch

from . import _ext

BACKENDS = ("auto", "reference", "triton", "cpu", "cuda")
AUTO_TABLE = Path(__file__).with_name("auto_backends.json")
# Order used where no measurement covers an op and device type. On CPU the C++ kernels are tested
# and measured here; on CUDA only the reference (PyTorch's own kernels) has run on a GPU so far, so
# auto does not pick a kernel that no GPU has executed: `cuda`/`triton` are there when asked for.
_DEFAULT_AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("reference",)}


def user_auto_table() -> Path:
    """Where ``--update-auto`` records this machine's measurements (read over the packaged
    table): $TLTORCH_EXT_CACHE, else $XDG_CACHE_HOME/tltorch_ext, else ~/.cache/tltorch_ext."""
    folder = os.environ.get("TLTORCH_EXT_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tltorch_ext"
    return Path(folder) / "auto_backends.json"


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
    if isinstance(device, torch.device):  # every op call passes one: skip the parse
        return device.type
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch.device, a device string such as 'cpu' or "
                         f"'cuda:0', or a tensor, got {device!r}") from None


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


def _read_table(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _merged(table: dict, orders: dict) -> dict:
    table = dict(table)
    for op, per_device in orders.items():
        table[op] = {**table.get(op, {}), **per_device}
    return table


@functools.lru_cache(maxsize=None)
def _auto_tables() -> tuple[dict, dict[tuple[str, str], Path]]:
    """The measured orders auto uses (the user's over the package's), read once, and for each
    (op, device type) the table its order came from."""
    table, sources = {}, {}
    for path in (AUTO_TABLE, user_auto_table()):
        recorded = _read_table(path)
        table = _merged(table, recorded)
        sources.update({(op, device_type): path
                        for op, per_device in recorded.items() for device_type in per_device})
    return table, sources


def record_auto_orders(orders: dict[str, dict[str, list[str]]]) -> Path:
    """Merge measured orders {op: {device_type: [fastest backend first, ...]}} into the user's
    table (what ``tltorch-ext bench --update-auto`` records; the installed package is left as
    it is). Returns the table's path."""
    path = user_auto_table()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_merged(_read_table(path), orders), indent=1, sort_keys=True)
                    + "\n")
    _auto_tables.cache_clear()
    return path


def auto_order(op: str, device_type: str) -> tuple[str, ...]:
    """Backends ``auto`` tries for ``op`` on ``device_type``, fastest measured first."""
    measured = _auto_tables()[0].get(op, {}).get(device_type)
    return tuple(measured or _DEFAULT_AUTO_ORDER.get(device_type, ("reference",)))


@functools.lru_cache(maxsize=None)
def _known_ops() -> tuple[str, ...]:
    """The op families: each module of tltorch_ext.ops that names its OP."""
    from . import ops  # noqa: PLC0415  (the op modules import this one)

    modules = (importlib.import_module(f"{ops.__name__}.{m.name}")
               for m in pkgutil.iter_modules(ops.__path__))
    return tuple(sorted(m.OP for m in modules if isinstance(getattr(m, "OP", None), str)))


def explain_backend(op: str, device="cpu") -> str:
    """One paragraph saying which backend runs ``op`` for tensors on ``device`` now, and why."""
    ops = _known_ops()
    if op not in ops:
        raise ValueError(f"op must be one of {ops}, got {op!r}")
    device_type = _as_device_type(device)
    name, chosen = get_backend(), resolve(op, device_type)
    available = available_backends(device_type, op)
    if name != "auto":
        why = f"set_backend({name!r}) (or TLTORCH_EXT_BACKEND) chose it"
    elif (op, device_type) in _auto_tables()[1]:
        why = (f"auto takes the fastest available of the measured order "
               f"{list(auto_order(op, device_type))} recorded in "
               f"{_auto_tables()[1][(op, device_type)]}")
    else:
        why = (f"auto found no measurement for {op} on {device_type} and takes the default order "
               f"{list(auto_order(op, device_type))}"
               + (" (no tltorch_ext kernel has run on a GPU yet: `tltorch-ext bench --device cuda "
                  "--update-auto` measures them here)" if device_type == "cuda" else ""))
    return f"{op} on {device_type}: runs {chosen!r}; {why}. Available here: {available}."


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
