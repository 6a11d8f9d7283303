"""Training: run_method (set-up, SGD steps, timing, test accuracy), run_jobs (many runs, serially
or in worker processes, with the same results) and the per-method summary."""
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from tqdm import tqdm

from .data import TransferData, source_images
from .methods import SETUPS, TargetTask
from .model import Classifier, build_model


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of the samples whose largest logit is at their label (the model in eval mode)."""
    model.eval()
    batches = zip(x.split(batch_size), y.split(batch_size))
    correct = sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in batches)
    return correct / len(y)


def run_method(method: str, task: TargetTask, evaluation: dict[str, tuple], args) -> dict:
    """Set up ``method``, train it ``task.steps`` steps of SGD with momentum, evaluate it.

    Returns the accuracy on each set of ``evaluation`` (name → (x, y)), the run's wall time, its
    set-up part (attention, relationship, recorded predictions) and the median cost of a step."""
    torch.manual_seed(task.seed)
    _synchronize(task.device)
    start = time.perf_counter()
    run = SETUPS[method](task)
    parameters = [*run.model.parameters(), *run.extra_parameters]
    optimizer = torch.optim.SGD(parameters, lr=args.lr, momentum=0.9, nesterov=True)
    batch_size = min(task.batch_size, len(task.y))
    generator = torch.Generator().manual_seed(task.seed)
    _synchronize(task.device)
    train_start = time.perf_counter()
    run.model.train()
    # Step cost: on CPU the calling thread's CPU time (all of the step's work with --threads 1),
    # which other processes sharing the cores barely disturb; on CUDA the wall time up to the
    # kernels' completion.
    step_clock = time.thread_time if task.device.type == "cpu" else time.perf_counter
    step_seconds = []
    steps = tqdm(range(task.steps), desc=f"{method} seed {task.seed}", disable=not task.progress,
                 leave=False)
    for _ in steps:
        step_start = step_clock()
        idx = torch.randperm(len(task.y), generator=generator)[:batch_size].to(task.device)
        optimizer.zero_grad(set_to_none=True)
        run.loss(task.x[idx], task.y[idx], idx).backward()
        optimizer.step()
        if run.after_step is not None:
            run.after_step()
        _synchronize(task.device)
        step_seconds.append(step_clock() - step_start)
    end = time.perf_counter()
    evaluated = run.model if run.evaluated is None else run.evaluated
    return {
        **{f"{name}_accuracy": accuracy(evaluated, *data) for name, data in evaluation.items()},
        "seconds": end - start,
        "setup_seconds": train_start - start,
        "ms_per_step": 1e3 * statistics.median(step_seconds),
    }


class Job(NamedTuple):
    """One run: ``method`` from the source model named ``source``, on the (shots, seed) split."""

    source: str
    method: str
    shots: int
    seed: int


@dataclass
class RunContext:
    """What every run of a comparison shares; sent once to each worker process."""

    args: argparse.Namespace  # the demo's options (lr, steps, batch size, model, device, threads)
    data: TransferData
    sources: dict[str, Classifier]  # the frozen source models, by name
    splits: dict[tuple[int, int], dict[str, torch.Tensor]]  # (shots, seed) → target_split


class _Runner:
    """Runs jobs of one context: the tensors moved to the device once."""

    def __init__(self, context: RunContext, progress: bool):
        args, data = context.args, context.data
        self.args, self.splits, self.progress = args, context.splits, progress
        self.device = device = torch.device(args.device)
        # On CPU, oneDNN's convolutions take a sixth to a third less time per step on
        # channels-last images and weights than on contiguous ones (docs/api_demo.md, "Run
        # time"); every copy of a source model inherits the format.
        self.memory_format = torch.channels_last if device.type == "cpu" else torch.preserve_format
        self.sources = {name: self._placed(model).eval().requires_grad_(False)
                        for name, model in context.sources.items()}
        self.target_x, self.target_y = self._placed(data.target_x), data.target_y.to(device)
        self.shared = ((self._placed(source_images(data, None)), data.source_y.to(device))
                       if data.shared_classes else (None, None))
        self.in_channels, self.num_classes = data.target_x.shape[1], len(data.target_names)
        # The first optimizer built imports torch._dynamo (about a second): no method's cost.
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)

    def _placed(self, x):
        """A module or a batch of images on the device, in the runs' memory format."""
        return x.to(self.device, memory_format=self.memory_format)

    def _fresh(self) -> Classifier:
        return self._placed(build_model(self.args, self.in_channels, self.num_classes))

    def __call__(self, job: Job) -> dict:
        split = {name: indices.to(self.device) for name, indices in
                 self.splits[job.shots, job.seed].items()}
        x, y = self.target_x, self.target_y
        task = TargetTask(
            self.sources[job.source], self._fresh, x[split["train"]], y[split["train"]],
            x[split["unlabelled"]], *self.shared, self.num_classes, self.args.steps,
            self.args.batch_size, job.seed, self.device, self.progress)
        evaluation = {name: (x[split[name]], y[split[name]]) for name in ("val", "test")}
        return run_method(job.method, task, evaluation, self.args)


def parallel_map(function: Callable, items: list, workers: int, progress: bool, desc: str,
                 initializer: Callable | None = None, initargs: tuple = ()) -> list:
    """``[function(item) for item in items]``, computed in ``workers`` processes, each set up by
    ``initializer(*initargs)`` (``workers`` 1: all in this process, set up the same way). The
    functions must be importable (module level) and the items and results picklable."""
    bar = tqdm(total=len(items), desc=desc, disable=not progress)
    if workers == 1:
        if initializer is not None:
            initializer(*initargs)
        results = []
        for item in items:
            results.append(function(item))
            bar.update()
    else:
        # spawn, not fork: a forked child may inherit the parent's thread pools mid-use.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=initializer, initargs=initargs) as pool:
            futures = {pool.submit(function, item): i for i, item in enumerate(items)}
            done = {}
            for future in as_completed(futures):
                done[futures[future]] = future.result()
                bar.update()
        results = [done[i] for i in range(len(items))]
    bar.close()
    return results


_worker_runner: _Runner | None = None  # the runner of this process's jobs


def _start_runner(context: RunContext) -> None:
    global _worker_runner
    torch.set_num_threads(context.args.threads)
    _worker_runner = _Runner(context, progress=False)


def _run_job(job: Job) -> dict:
    return _worker_runner(job)


def run_jobs(context: RunContext, jobs: list[Job], workers: int, progress: bool) -> dict[Job, dict]:
    """The result of :func:`run_method` for every job, computed in ``workers`` processes. Every
    run seeds its own random numbers, so the accuracies depend neither on the order nor on the
    process: with the same ``--threads`` they are the same for any ``workers``."""
    global _worker_runner
    try:
        results = parallel_map(_run_job, jobs, workers, progress, "runs",
                               _start_runner, (context,))
    finally:
        _worker_runner = None  # workers == 1 set it up in this process
    return dict(zip(jobs, results))


def summarize(method: str, shots: int, runs: list[dict], seeds: list[int]) -> dict:
    """Mean and std over the seeds of one method at one shot count."""
    def mean_std(key):
        values = [r[key] for r in runs]
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    accuracy_mean, accuracy_std = mean_std("test_accuracy")
    return {
        "method": method,
        "shots": shots,
        "accuracy_mean": accuracy_mean,
        "accuracy_std": accuracy_std,
        "val_accuracy_mean": mean_std("val_accuracy")[0],
        "seconds_mean": mean_std("seconds")[0],
        "setup_seconds_mean": mean_std("setup_seconds")[0],
        "ms_per_step": mean_std("ms_per_step")[0],
        "overhead_ms_per_step": None,
        "runs": [{"seed": s, **r} for s, r in zip(seeds, runs)],
    }
