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
from .data import few_shot_split, load_data
from .methods import METHODS, TargetTask
from .model import pretrain_source
from .output import format_table, write_outputs
from .training import _summary, accuracy, run_method


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
                             "digits, 0-4 -> 5-9)")
    parser.add_argument("--image-size", type=_positive_int, default=16,
                        help="side to which folder images are resized (grayscale); default 16")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        metavar="METHOD",
                        help=f"methods to compare, among {', '.join(METHODS)} (default: all)")
    parser.add_argument("--shots", type=_positive_int, default=10,
                        help="labelled training samples per target class (default 10)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds of the target split and of fine-tuning (default 0 1 2)")
    parser.add_argument("--steps", type=_positive_int, default=200,
                        help="fine-tuning steps per run (default 200)")
    parser.add_argument("--epochs", type=_positive_int, default=10,
                        help="source pre-training epochs (default 10)")
    parser.add_argument("--lr", type=_positive_float, default=0.05,
                        help="fine-tuning learning rate of SGD, every layer (default 0.05)")
    parser.add_argument("--batch-size", type=_positive_int, default=32)
    parser.add_argument("--width", type=_positive_int, default=32,
                        help="channels of the first conv block (default 32)")
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
    data = load_data(args.data, args.image_size)
    source_x, source_y = data.task(data.source_classes)
    target_x, target_y = data.task(data.target_classes)
    names = [[data.class_names[c] for c in classes]
             for classes in (data.source_classes, data.target_classes)]
    _note(args, f"data: {data.description}; source classes {names[0]} ({len(source_x)} samples), "
                f"target classes {names[1]} ({len(target_x)} samples, {args.shots} per class "
                "to train, the rest to test)")
    splits = {seed: few_shot_split(target_y, args.shots, seed) for seed in seeds}  # before training
    source, note = pretrain_source(data, args, device)
    source_accuracy = accuracy(source, source_x.to(device), source_y.to(device))
    _note(args, f"source model: {note}; source train accuracy {100 * source_accuracy:.1f} %")
    for parameter in source.parameters():
        parameter.requires_grad_(False)

    # The first optimizer built imports torch._dynamo (about a second): no method's cost.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    summaries = []
    for method in tqdm(list(dict.fromkeys(args.methods)), desc="methods", disable=args.quiet):
        runs = []
        for seed in seeds:
            train, test = splits[seed]
            task = TargetTask(source, target_x[train].to(device), target_y[train].to(device),
                              len(data.target_classes), device, progress=not args.quiet)
            test_set = (target_x[test].to(device), target_y[test].to(device))
            runs.append(run_method(method, task, test_set, args, seed))
        summaries.append(_summary(method, runs, seeds))

    baseline = next((s for s in summaries if s["method"] == "finetune"), None)
    if baseline is not None:
        for s in summaries:
            s["overhead_ms_per_step"] = s["ms_per_step"] - baseline["ms_per_step"]
    total = time.perf_counter() - total_start
    meta = {
        "data": data.description, "source_classes": names[0], "target_classes": names[1],
        "device": str(device), "shots": args.shots, "seeds": seeds, "steps": args.steps,
        "pretrain_epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(), "backends": available_backends(device),
        "chance_accuracy": 1 / len(data.target_classes), "source_train_accuracy": source_accuracy,
        "total_seconds": total,
    }
    print(format_table(summaries))
    paths = write_outputs(summaries, meta, Path(args.out))
    print(f"total {total:.1f} s; wrote {', '.join(str(p) for p in paths)}")
    return 0
