"""The benchmark harness and the GPU session script: what a first GPU run depends on, rehearsed
on CPU."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from tltorch_ext.benchmarking import harness

ROOT = Path(__file__).resolve().parents[1]


def failing_kernel():
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_a_failing_candidate_is_recorded_and_never_chosen_for_auto():
    ones = torch.ones(4)
    ok = harness.Case("bss", "tiny", {"torch": ones.sum, "tltorch_ext[cpu]": ones.sum,
                                      "tltorch_ext[triton]": ones.sum}, baseline="torch")
    broken = harness.Case("bss", "tiny 2", {"torch": ones.sum, "tltorch_ext[cpu]": ones.sum,
                                            "tltorch_ext[triton]": failing_kernel},
                          baseline="torch")
    device = torch.device("cpu")
    results = harness.run_case(ok, device, quick=True) + harness.run_case(broken, device, True)
    failed = [r for r in results if r.error]
    assert [(r.group, r.candidate) for r in failed] == [("tiny 2", "tltorch_ext[triton]")]
    assert "illegal memory access" in failed[0].error and math.isnan(failed[0].median_ms)
    assert "failed: RuntimeError: CUDA error" in harness.format_table(results)
    # triton ran faster than cpu or not, it failed once, so auto must not take it
    assert harness.fastest_backends(results, "cuda") == {"bss": {"cuda": ["cpu"]}}


def test_memory_measured_elsewhere_is_reported_as_not_measured(tmp_path):
    # A case whose work runs in other processes (SyncStochNorm's ranks) has no peak in this one:
    # the table says n/a and the JSON null, where a measured case gives a number (> 0 here).
    ones = torch.ones(256, 256)
    measured = harness.Case("bss", "here", {"torch": lambda: ones * 2}, baseline="torch")
    elsewhere = harness.Case("sync_stoch_norm", "ranks", {"ranks": ones.sum}, baseline="ranks",
                             measures_memory=False)
    device = torch.device("cpu")
    here, = harness.run_case(measured, device, quick=True)
    ranks, = harness.run_case(elsewhere, device, quick=True)
    assert here.peak_mb > 0 and ranks.peak_mb is None and ranks.median_ms > 0
    row = harness.format_table([ranks]).splitlines()[-1]
    assert row.split()[-2:] == ["1.00x", "n/a"]  # speedup, then the peak column
    harness.write_json([here, ranks], device, tmp_path / "cpu.json")
    peaks = [r["peak_mb"] for r in json.loads((tmp_path / "cpu.json").read_text())["results"]]
    assert peaks[0] > 0 and peaks[1] is None


def test_the_sync_stoch_norm_cases_do_not_claim_a_memory_figure():
    cases = harness.cases("sync_stoch_norm", torch.device("cpu"), quick=True)
    assert cases and all(not case.measures_memory for case in cases)


def test_gpu_session_dry_run_completes_every_stage(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable,
           "TRITON_INTERPRET": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), "--dry-run"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    stages = (tmp_path / "stages.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in stages] == ["versions", "build", "gpu_tests", "bench",
                                                       "explain"]
    assert all(": ok in " in line for line in stages), stages
    results = json.loads((tmp_path / "cpu-quick.json").read_text())
    assert results["device"]["device_type"] == "cpu" and results["results"]
    auto = json.loads((tmp_path / "auto_backends.json").read_text())  # the session's cache
    assert auto["bss"]["cpu"]
    explained = (tmp_path / "explain.log").read_text()
    assert str(tmp_path / "auto_backends.json") in explained  # auto reads what was measured


def test_bench_does_not_import_the_demo():
    code = ("import sys\nfrom tltorch_ext import cli\n"
            "args = cli.build_parser(demo_options=False).parse_args(['bench', '--ops', 'bss'])\n"
            "assert not any(m.startswith('tltorch_ext.demo') for m in sys.modules), 'demo loaded'\n"
            "cli.build_parser().parse_args(['demo', '--seeds', '0'])\n"
            "assert 'tltorch_ext.demo' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
