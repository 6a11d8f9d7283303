"""Training: run_method (set-up, SGD steps, timing, test accuracy) and the per-method summary."""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from tqdm import tqdm

from .methods import SETUPS, TargetTask


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
    steps = tqdm(range(task.steps), desc=f"{method} seed {task.seed}", disable=args.quiet,
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
