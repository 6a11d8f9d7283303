"""pytest-benchmark view of the BSS cases (tltorch_ext/benchmarking/bss.py), quick set:
``pytest benchmarks/test_bench_bss.py --benchmark-enable``. Full tables, JSON and plots:
``tltorch-ext bench --ops bss``."""
import pytest
import torch

from tltorch_ext.benchmarking import cases

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = cases("bss", DEVICE, quick=True)
PARAMS = [(case, name) for case in CASES for name in case.candidates]


@pytest.mark.parametrize("case,candidate", PARAMS,
                         ids=[f"{case.group}-{name}" for case, name in PARAMS])
def test_bss(benchmark, case, candidate):
    benchmark.group = case.group
    fn = case.candidates[candidate]
    fn()  # warm-up
    if DEVICE.type == "cuda":
        def run():
            fn()
            torch.cuda.synchronize()
        benchmark(run)
    else:
        benchmark(fn)
