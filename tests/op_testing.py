"""What the hot-path op tests share: the backends to run, the relative-error measure and its
bounds. Each op's test module supplies its inputs and an independent float64 oracle."""
from __future__ import annotations

import torch

import tltorch_ext

HAS_CUDA = torch.cuda.is_available()
# Every concrete backend that runs on CPU tensors here (conftest makes sure the compiled and the
# Triton ones are among them); those on CUDA tensors, and the kernels among them.
CPU_BACKENDS = tltorch_ext.available_backends("cpu")
CUDA_BACKENDS = tltorch_ext.available_backends("cuda") if HAS_CUDA else []
GPU_BACKENDS = [b for b in CUDA_BACKENDS if b != "reference"]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; a NaN in ``out`` fails at once."""
    assert not out.isnan().any(), "NaN in output"
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def tolerances(float32: float, bfloat16: float, float16: float) -> dict[torch.dtype, float]:
    """Relative-error bounds per input dtype (float64 results must agree to rounding)."""
    return {torch.float64: 1e-12, torch.float32: float32, torch.bfloat16: bfloat16,
            torch.float16: float16}
