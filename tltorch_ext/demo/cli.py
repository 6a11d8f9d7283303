"""CLI: the demo's options (add_arguments) and the comparison itself (run_demo)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .._backend import available_backends
from ._common import DemoError
from .data import load_data, source_images, target_split
from .methods import METHODS, NEEDS_SHARED_CLASSES, TargetTask
from .model import RESNETS, build_model, pretrain_source
from .output import format_table, write_outputs
from .training import accuracy, run_method, summarize


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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds of the target split and of fine-tuning (default 0 1 2)")
    parser.add_argument("--steps", type=_positive_int, default=100,
                        help="training steps per run (default 100)")
    parser.add_argument("--epochs", type=_positive_int, default=40,
                        help="source pre-training epochs (default 40)")
    parser.add_argument("--lr", type=_positive_float, default=0.05,
                        help="fine-tuning learning rate of SGD, every layer (default 0.05)")
    parser.add_argument("--batch-size", type=_positive_int, default=32)
    parser.add_argument("--model", choices=["cnn", *RESNETS], default="cnn",
                        help="the demo's small CNN (default) or a ResNet with torchvision's "
                             "parameter names")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="a checkpoint of --model (for example a torchvision ResNet state "
                             "dict) that pre-training on the source task starts from")
    parser.add_argument("--width", type=_positive_int, default=32,
                        help="channels of the cnn's first conv block (default 32)")
    parser.add_argument("--pretrain-seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=_positive_int, default=1,
                        help="CPU threads of torch (default 1: the demo's tensors are too small to "
                             "gain from more, and one thread makes ms/step a clean CPU-time "
                             "measure)")
    parser.add_argument("--out", default="demo_out", help="folder for results.json/.csv/.png")
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache"))
    parser.add_argument("--cache-dir", default=str(cache_home / "tltorch_ext"),
                        help="where the pre-trained source model is cached")
    parser.add_argument("--no-cache", action="store_true", help="pre-train again, write no cache")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or notes")


def run_demo(args: argparse.Namespace) -> int:
    """Run the comparison; returns the process exit status (2 on bad input)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    except DemoError as error:
        print(f"tltorch-ext demo: error: {error}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)


def _note(args, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _run(args) -> int:
    total_start = time.perf_counter()
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise DemoError(f"--device {args.device!r} is not a torch device ({error})") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DemoError("--device cuda asked for, but torch sees no CUDA device")
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
    target_x, target_y = data.target_x.to(device), data.target_y.to(device)
    test = splits[shots_list[0], seeds[0]]["test"]  # the same for every split
    as_is = accuracy(source, target_x[test], target_y[test]) if data.shared_classes else None
    if as_is is not None:
        _note(args, f"source model on the target test set, not adapted: {100 * as_is:.1f} %")
    shared = (source_x, source_y) if data.shared_classes else (None, None)

    def fresh():
        return build_model(args, data.source_x.shape[1], len(data.target_names)).to(device)

    # The first optimizer built imports torch._dynamo (about a second): no method's cost.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    summaries = []
    jobs = [(shots, method) for shots in shots_list for method in methods]
    for shots, method in tqdm(jobs, desc="runs", disable=args.quiet):
        runs = []
        for seed in seeds:
            split = splits[shots, seed]
            train = split["train"].to(device)
            task = TargetTask(
                source, fresh, target_x[train], target_y[train],
                target_x[split["unlabelled"].to(device)], *shared, len(data.target_names),
                args.steps, args.batch_size, seed, device, progress=not args.quiet)
            evaluation = {name: (target_x[split[name].to(device)], target_y[split[name].to(device)])
                          for name in ("val", "test")}
            runs.append(run_method(method, task, evaluation, args))
        summaries.append(summarize(method, shots, runs, seeds))

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
        "torch_threads": torch.get_num_threads(), "backends": available_backends(device),
        "chance_accuracy": 1 / len(data.target_names), "source_train_accuracy": source_accuracy,
        "source_as_is_test_accuracy": as_is, "total_seconds": total,
    }
    print(format_table(summaries, shots_list))
    paths = write_outputs(summaries, meta, Path(args.out))
    print(f"total {total:.1f} s; wrote {', '.join(str(p) for p in paths)}")
    return 0
