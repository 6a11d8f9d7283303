"""Access to the compiled extension ``tltorch_ext._C`` and the ops it registers
(``torch.ops.tltorch_ext_C.<op>_<fn>``).

The package works without it (reference and Triton backends); the first time a C++ backend is
looked for and the extension is missing, one warning says why.
"""
from __future__ import annotations

import functools
import warnings

import torch


@functools.lru_cache(maxsize=None)
def _load():
    """Return (module or None, reason it is unavailable or None)."""
    try:
        from . import _C  # noqa: PLC0415
    except ImportError as exc:  # not built, or built against another torch
        return None, f"{type(exc).__name__}: {exc}"
    return _C, None


@functools.lru_cache(maxsize=None)
def _warn_once(reason: str) -> None:
    warnings.warn(
        "tltorch_ext: the compiled extension tltorch_ext._C is unavailable, so the 'cpu' and "
        f"'cuda' backends are off and the reference/Triton backends serve instead ({reason}). "
        "Build it with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=3,
    )


def extension():
    """The compiled module, or None (warning once with the reason)."""
    module, reason = _load()
    if module is None:
        _warn_once(reason)
    return module


def has_cpu() -> bool:
    return extension() is not None


def has_cuda() -> bool:
    module = extension()
    return module is not None and bool(getattr(module, "WITH_CUDA", False))


_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


@functools.lru_cache(maxsize=None)
def has_op(op: str, backend: str) -> bool:
    """Whether the compiled module registered a ``backend`` ('cpu' or 'cuda') kernel for ``op``'s
    forward (a stale build may predate the op). Asked on every op call, and fixed once _C is
    loaded: cached."""
    return (extension() is not None and hasattr(torch.ops.tltorch_ext_C, f"{op}_forward")
            and torch._C._dispatch_has_kernel_for_dispatch_key(f"tltorch_ext_C::{op}_forward",
                                                                _DISPATCH_KEYS[backend]))


def compiled_op(op: str, fn: str):
    """``torch.ops.tltorch_ext_C.<op>_<fn>``: the registered C++/CUDA kernels of ``op``'s ``fn``."""
    extension()  # loading _C registers the ops
    return getattr(torch.ops.tltorch_ext_C, f"{op}_{fn}")
