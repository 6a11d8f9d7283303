"""pytest-benchmark view of every op's quick case set (tltorch_ext/benchmarking/<op>.py):
``pytest benchmarks/test_bench_ops.py --benchmark-enable [-k stoch_norm]``. Full tables with peak
memory, JSON and plots: ``tltorch-ext bench``."""
import pytest
import torch

from tltorch_ext.benchmarking import OPS, cases

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PARAMS = [(case, name) for op in OPS for case in cases(op, DEVICE, quick=True)
          for name in case.candidates]


@pytest.mark.parametrize("case,candidate", PARAMS,
                         ids=[f"{case.op} {case.group}-{name}" for case, name in PARAMS])
def test_op(benchmark, case, candidate):
    benchmark.group = f"{case.op} {case.group}"
    fn = case.candidates[candidate]
    fn()  # warm-up (and compilation for torch.compile)
    if DEVICE.type == "cuda":
        def run():
            fn()
            torch.cuda.synchronize()
        benchmark(run)
    else:
        benchmark(fn)
