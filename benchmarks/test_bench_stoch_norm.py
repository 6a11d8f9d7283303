"""pytest-benchmark view of the StochNorm cases (tltorch_ext/benchmarking/stoch_norm.py), quick
set: ``pytest benchmarks/test_bench_stoch_norm.py --benchmark-enable``. Full tables, JSON and plots:
``tltorch-ext bench --ops stoch_norm``."""
import pytest
import torch

from tltorch_ext.benchmarking import cases

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = cases("stoch_norm", DEVICE, quick=True)
PARAMS = [(case, name) for case in CASES for name in case.candidates]


@pytest.mark.parametrize("case,candidate", PARAMS,
                         ids=[f"{case.group}-{name}" for case, name in PARAMS])
def test_stoch_norm(benchmark, case, candidate):
    benchmark.group = case.group
    fn = case.candidates[candidate]
    fn()  # warm-up (and compilation for torch.compile)
    if DEVICE.type == "cuda":
        def run():
            fn()
            torch.cuda.synchronize()
        benchmark(run)
    else:
        benchmark(fn)
