"""CLI: the demo's options (add_arguments; add_training_arguments, shared with ``rank``) and the
comparison itself (run_demo)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .._backend import available_backends
from ._common import DemoError
from .data import load_data, source_images, target_split
from .methods import METHODS, NEEDS_SHARED_CLASSES
from .model import RESNETS, pretrain_source
from .output import format_table, write_outputs
from .training import Job, RunContext, accuracy, run_jobs, summarize


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options, added to ``parser``."""
    parser.add_argument("--data", default=None, metavar="PATH",
                        help="an .npz (arrays x (N,H,W) or (N,C,H,W), y (N,)) or a folder of "
                             "class sub-folders of images; the first half of the sorted classes is "
                             "the source task, the rest the target task (default: scikit-learn's "
                             "digits, clean -> inverted and noisy)")
    parser.add_argument("--image-size", type=_positive_int, default=16,
                        help="side to which folder images are resized (grayscale); default 16")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None, metavar="METHOD",
                        help=f"methods to compare, among {', '.join(METHODS)} (default: all that "
                             "the data allows; dann needs the source's classes on the target)")
    parser.add_argument("--shots", type=_positive_int, nargs="+", default=[1, 3, 10],
                        help="labelled training samples per target class, one learning-curve "
                             "point each (default 1 3 10)")
    parser.add_argument("--model", choices=["cnn", *RESNETS], default="cnn",
                        help="the demo's small CNN (default) or a ResNet with torchvision's "
                             "parameter names")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="a checkpoint of --model (for example a torchvision ResNet state "
                             "dict) that pre-training on the source task starts from")
    parser.add_argument("--out", default="demo_out", help="folder for results.json/.csv/.png")
    add_training_arguments(parser)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that ``demo`` and ``rank`` share: fine-tuning, pre-training, where it runs."""
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds of the target split and of fine-tuning (default 0 1 2)")
    parser.add_argument("--steps", type=_positive_int, default=100,
                        help="training steps per run (default 100)")
    parser.add_argument("--epochs", type=_positive_int, default=40,
                        help="source pre-training epochs (default 40)")
    parser.add_argument("--lr", type=_positive_float, default=0.05,
                        help="fine-tuning learning rate of SGD, every layer (default 0.05)")
    parser.add_argument("--batch-size", type=_positive_int, default=32)
    parser.add_argument("--width", type=_positive_int, default=32,
                        help="channels of the cnn's first conv block (default 32)")
    parser.add_argument("--pretrain-seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=_positive_int, default=1,
                        help="CPU threads of torch (default 1: the demo's tensors are too small to "
                             "gain from more, and one thread makes ms/step a clean CPU-time "
                             "measure)")
    parser.add_argument("--workers", type=_positive_int, default=None,
                        help="processes running the independent runs side by side, each with "
                             "--threads threads; the accuracies are the same for any number "
                             "(default: the CPU cores available on CPU, 1 on CUDA)")
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache"))
    parser.add_argument("--cache-dir", default=str(cache_home / "tltorch_ext"),
                        help="where the pre-trained source model is cached")
    parser.add_argument("--no-cache", action="store_true", help="pre-train again, write no cache")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or notes")


def run_demo(args: argparse.Namespace) -> int:
    """Run the comparison; returns the process exit status (2 on bad input)."""
    return run_command("demo", _run, args)


def run_command(name: str, run: Callable[[argparse.Namespace], int], args) -> int:
    """``run(args)`` with ``--threads`` torch threads; a DemoError is one ``tltorch-ext <name>:
    error:`` line on stderr and exit status 2."""
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    except DemoError as error:
        print(f"tltorch-ext {name}: error: {error}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)


def resolve_device(args) -> torch.device:
    """``--device`` as a torch device that is there."""
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise DemoError(f"--device {args.device!r} is not a torch device ({error})") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DemoError("--device cuda asked for, but torch sees no CUDA device")
    return device


def worker_count(args, device: torch.device, jobs: int) -> int:
    """--workers, else one per CPU core available (one on CUDA: the runs would share the GPU and
    its timing); never more than the jobs."""
    if args.workers is not None:
        return min(args.workers, jobs)
    if device.type == "cuda":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, jobs))


def _note(args, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _run(args) -> int:
    total_start = time.perf_counter()
    device = resolve_device(args)
    seeds = list(dict.fromkeys(args.seeds))
    shots_list = sorted(set(args.shots))
    data = load_data(args.data, args.image_size)
    methods = list(dict.fromkeys(args.methods or [
        m for m in METHODS if data.shared_classes or m not in NEEDS_SHARED_CLASSES]))
    unshared = NEEDS_SHARED_CLASSES.intersection(methods)
    if unshared and not data.shared_classes:
        raise DemoError(f"{', '.join(sorted(unshared))} needs the source's classes on the target "
                        "(the built-in digits task); --data splits the classes in two")
    _note(args, f"data: {data.description}; source classes {data.source_names} "
                f"({len(data.source_y)} samples), target classes {data.target_names} "
                f"({len(data.target_y)} samples)")
    # Every split before any training, so that bad input is reported at once.
    splits = {(shots, seed): target_split(data.target_y, shots, seed)
              for shots in shots_list for seed in seeds}
    source, note = pretrain_source(data, args, device)
    source_x, source_y = source_images(data, None).to(device), data.source_y.to(device)
    source_accuracy = accuracy(source, source_x, source_y)
    _note(args, f"source model: {note}; source train accuracy {100 * source_accuracy:.1f} %")
    source.requires_grad_(False)
    test = splits[shots_list[0], seeds[0]]["test"].to(device)  # the same for every split
    target_x, target_y = data.target_x.to(device), data.target_y.to(device)
    as_is = accuracy(source, target_x[test], target_y[test]) if data.shared_classes else None
    if as_is is not None:
        _note(args, f"source model on the target test set, not adapted: {100 * as_is:.1f} %")

    # The costlier runs (more shots) first, so that no worker is left with a long one at the end.
    jobs = [Job("source", method, shots, seed)
            for shots in reversed(shots_list) for method in methods for seed in seeds]
    workers = worker_count(args, device, len(jobs))
    context = RunContext(args, data, {"source": source}, splits)
    results = run_jobs(context, jobs, workers, progress=not args.quiet)
    summaries = [summarize(method, shots, [results[Job("source", method, shots, seed)]
                                           for seed in seeds], seeds)
                 for shots in shots_list for method in methods]

    for s in summaries:
        baseline = next((b for b in summaries
                         if b["method"] == "finetune" and b["shots"] == s["shots"]), None)
        if baseline is not None:
            s["overhead_ms_per_step"] = s["ms_per_step"] - baseline["ms_per_step"]
    total = time.perf_counter() - total_start
    meta = {
        "data": data.description, "source_classes": data.source_names,
        "target_classes": data.target_names, "model": args.model, "weights": args.weights,
        "device": str(device), "shots": shots_list, "seeds": seeds, "steps": args.steps,
        "pretrain_epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(), "workers": workers,
        "backends": available_backends(device),
        "chance_accuracy": 1 / len(data.target_names), "source_train_accuracy": source_accuracy,
        "source_as_is_test_accuracy": as_is, "total_seconds": total,
    }
    print(format_table(summaries, shots_list))
    paths = write_outputs(summaries, meta, Path(args.out))
    print(f"total {total:.1f} s; wrote {', '.join(str(p) for p in paths)}")
    return 0
