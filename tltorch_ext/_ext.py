"""Access to the compiled extension ``tltorch_ext._C``.

The package works without it (reference and Triton backends); the first time a C++ backend is
looked for and the extension is missing, one warning says why.
"""
from __future__ import annotations

import functools
import warnings


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


def has_op(op: str, backend: str) -> bool:
    """Whether the compiled module has ``op``'s forward for ``backend`` ('cpu' or 'cuda')."""
    module = extension()
    return module is not None and hasattr(module, f"{op}_forward_{backend}")
