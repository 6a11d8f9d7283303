"""Benchmarks of the hot-path ops (see harness.py); run them with ``tltorch-ext bench``."""
from .harness import OPS, Case, Result, cases, register, run_case, with_backends

__all__ = ["OPS", "Case", "Result", "cases", "register", "run_case", "with_backends"]
