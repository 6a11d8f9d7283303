"""Benchmark harness behind ``tltorch-ext bench`` and ``benchmarks/test_bench_*.py``.

An op's cases live in ``tltorch_ext/benchmarking/<op>.py`` (found by its name, no list to edit):
a generator decorated with ``@register("<op>")`` that takes ``(device, quick)`` and yields
:class:`Case` objects. A case is one workload (say "fwd+bwd 32x64x56x56 fp32 NCHW") and the
candidates that compute it: each a zero-argument callable doing the work once (inputs made
beforehand, outside the callable). :func:`with_backends` turns one callable into a candidate per
tltorch_ext backend. The harness times every candidate (median over repetitions, CUDA events on
GPU), measures its peak memory, and reports the speedup over the case's baseline and, given bytes
or flops, the achieved rate.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import os
import pkgutil
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from .. import _backend

# Every module beside this one holds the cases of the op (or workload) it is named after: adding
# an op's benchmark is adding its module.
OPS = tuple(sorted(module.name for module in pkgutil.iter_modules([str(Path(__file__).parent)])
                   if module.name != "harness"))
_CASES: dict[str, Callable[[torch.device, bool], Iterable["Case"]]] = {}


@dataclasses.dataclass
class Case:
    op: str
    group: str
    candidates: dict[str, Callable[[], object]]
    baseline: str
    bytes_moved: int | None = None  # for GB/s
    flops: int | None = None  # for TFLOP/s
    # False where torch's allocations in this process do not see the work (it runs in other
    # processes): the peak memory is then reported as not measured, never as 0.
    measures_memory: bool = True


@dataclasses.dataclass
class Result:
    op: str
    group: str
    candidate: str
    median_ms: float
    speedup: float  # baseline median / this median
    peak_mb: float | None  # None: not measured (Case.measures_memory)
    gbps: float | None
    tflops: float | None
    error: str | None = None  # the candidate raised: no time, and auto never picks it


def register(op: str):
    """Decorator for an op's case generator ``fn(device, quick) -> Iterable[Case]``."""
    def decorate(fn):
        _CASES[op] = fn
        return fn
    return decorate


def cases(op: str, device: torch.device, quick: bool) -> list[Case]:
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; benchmarked ops: {OPS}")
    importlib.import_module(f"{__package__}.{op}")
    return list(_CASES[op](torch.device(device), quick))


def with_backends(fn: Callable[[], object], device) -> dict[str, Callable[[], object]]:
    """One candidate per tltorch_ext backend that runs on ``device`` (the Triton interpreter on
    CPU tensors excepted: it is a correctness tool, not a backend to time)."""
    device_type = torch.device(device).type
    out = {}
    for name in _backend.available_backends(device_type):
        if name == "triton" and device_type == "cpu":
            continue

        def run(name=name):
            with _backend.set_backend(name):
                return fn()
        out[f"tltorch_ext[{name}]"] = run
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> float:
    """Median wall time of one call in milliseconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    if device.type == "cuda":
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory allocated by torch during one call, above what was allocated before it."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    # On CPU, the profiler's allocation records carry the allocator's running total.
    from torch._C._profiler import _EventType  # noqa: PLC0415
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocations, nodes = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while nodes:
        node = nodes.pop()
        if node.tag == _EventType.Allocation:
            fields = node.extra_fields
            allocations.append((node.start_time_ns, fields.total_allocated, fields.alloc_size))
        nodes.extend(node.children)
    if not allocations:
        return 0.0
    allocations.sort()
    _, first_total, first_size = allocations[0]
    return (max(total for _, total, _ in allocations) - (first_total - first_size)) / 2**20


@contextlib.contextmanager
def _stderr_silenced():
    """The profiler's native layer logs every start and stop to file descriptor 2: mute it."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def run_case(case: Case, device: torch.device, quick: bool) -> list[Result]:
    """One Result per candidate. A candidate that raises (a kernel never run on this device
    before may) is recorded with its error, so the other candidates and cases still run."""
    warmup, reps = (1, 3) if quick else (3, 15)
    measured: dict[str, tuple[float, float] | str] = {}
    for name, fn in case.candidates.items():
        try:
            peak = peak_memory_mb(fn, device) if case.measures_memory else None
            measured[name] = (time_ms(fn, device, warmup, reps), peak)
        except Exception as error:  # noqa: BLE001  (reported in the table and the JSON)
            measured[name] = f"{type(error).__name__}: {error}".splitlines()[0][:200]
    base = measured[case.baseline][0] if isinstance(measured[case.baseline], tuple) else math.nan
    results = []
    for name, outcome in measured.items():
        if isinstance(outcome, str):
            results.append(Result(case.op, case.group, name, math.nan, math.nan, math.nan, None,
                                  None, error=outcome))
            continue
        ms, peak = outcome
        results.append(Result(
            op=case.op, group=case.group, candidate=name, median_ms=ms, speedup=base / ms,
            peak_mb=peak, gbps=case.bytes_moved / ms / 1e6 if case.bytes_moved else None,
            tflops=case.flops / ms / 1e9 if case.flops else None,
        ))
    return results


def copy_bandwidth_gbs(device: torch.device, mib: int = 512) -> float:
    """Measured device-memory bandwidth of a plain copy (read + write), the roof for GB/s."""
    src = torch.empty(mib * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup=3, reps=20)
    return 2 * src.numel() / ms / 1e6


def device_info(device: torch.device) -> dict:
    info = {"device_type": device.type, "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["copy_gbs"] = round(copy_bandwidth_gbs(device), 1)
    else:
        info["name"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    try:
        import triton  # noqa: PLC0415

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


def format_table(results: list[Result]) -> str:
    header = f"{'op':<13} {'case':<40} {'candidate':<28} {'median ms':>10} {'speedup':>8} {'peak MB':>9} {'GB/s':>7}"
    lines = [header, "-" * len(header)]
    for r in results:
        if r.error:
            lines.append(f"{r.op:<13} {r.group:<40} {r.candidate:<28} failed: {r.error}")
            continue
        rate = f"{r.gbps:7.0f}" if r.gbps else f"{'':>7}"
        peak = f"{'n/a':>9}" if r.peak_mb is None else f"{r.peak_mb:9.1f}"
        lines.append(f"{r.op:<13} {r.group:<40} {r.candidate:<28} {r.median_ms:10.3f} "
                     f"{r.speedup:7.2f}x {peak} {rate}")
    return "\n".join(lines)


def fastest_backends(results: list[Result], device_type: str) -> dict[str, dict[str, list[str]]]:
    """Per op, the tltorch_ext backends ordered by their total median time over all cases; a
    backend that failed in any case of the op is left out of its order."""
    totals: dict[str, dict[str, float]] = {}
    failed = set()
    for r in results:
        if r.candidate.startswith("tltorch_ext["):
            backend = r.candidate[len("tltorch_ext["):-1]
            if r.error:
                failed.add((r.op, backend))
            per_op = totals.setdefault(r.op, {})
            per_op[backend] = per_op.get(backend, 0.0) + (0.0 if r.error else r.median_ms)
    return {op: {device_type: sorted((b for b in t if (op, b) not in failed), key=t.get)}
            for op, t in totals.items()}


def write_json(results: list[Result], device: torch.device, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "device": device_info(device),
        "date": time.strftime("%Y-%m-%d"),
        "results": [dataclasses.asdict(r) for r in results],
    }
    path.write_text(json.dumps(payload, indent=1) + "\n")


def plot(results: list[Result], path: Path) -> None:
    """Speedup over each case's baseline, one bar per candidate, one panel per op."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    ops = sorted({r.op for r in results})
    fig, axes = plt.subplots(len(ops), 1, figsize=(12, 3.2 * len(ops)), squeeze=False)
    for ax, op in zip(axes[:, 0], ops):
        rows = [r for r in results if r.op == op]
        groups = list(dict.fromkeys(r.group for r in rows))
        names = list(dict.fromkeys(r.candidate for r in rows))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            xs, ys = [], []
            for g, group in enumerate(groups):
                match = [r for r in rows if r.group == group and r.candidate == name]
                if match:
                    xs.append(g + i * width)
                    ys.append(match[0].speedup)
            ax.bar(xs, ys, width, label=name)
        ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups, fontsize=7,
                      rotation=15)
        ax.set_yscale("log")
        ax.set_ylabel("speedup vs baseline")
        ax.set_title(op)
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
