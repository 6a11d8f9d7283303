"""pytest-benchmark view of the FSP and NST cases (tltorch_ext/benchmarking/fsp.py, nst.py), quick
set: ``pytest benchmarks/test_bench_fsp_nst.py --benchmark-enable``. Full tables with peak
memory, JSON and plots: ``tltorch-ext bench --ops fsp nst``."""
import pytest
import torch

from tltorch_ext.benchmarking import cases

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PARAMS = [(case, name) for op in ("fsp", "nst") for case in cases(op, DEVICE, quick=True)
          for name in case.candidates]


@pytest.mark.parametrize("case,candidate", PARAMS,
                         ids=[f"{case.op} {case.group}-{name}" for case, name in PARAMS])
def test_fsp_nst(benchmark, case, candidate):
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
