"""``tltorch-ext rank``: the transferability scores rank candidate source models, beside the
accuracy each reaches once fine-tuned, and Kendall's τ-b says how well each score's ranking agrees
with the accuracy's.

The candidates are the demo's small CNN pre-trained on different source tasks made from the
built-in digits task's source half (nothing downloaded; cached like the demo's source model), so
that they transfer to its inverted, noisy target differently. Every score and every fine-tuning
run sees the same target split per seed: the scores are computed on its labelled training set,
the fine-tuned model is measured on its validation set (the test set plays no part here).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..ranking import h_score, leep, log_me, nce
from ._common import DemoError
from .cli import _positive_int, add_training_arguments, resolve_device, run_command, worker_count
from .data import TransferData, digits_task, standardize_digits, target_split
from .model import Classifier, build_model, pretrain_source
from .training import Job, RunContext, parallel_map, run_jobs


def _augmented(data: TransferData) -> TransferData:
    return data


def _clean(data: TransferData) -> TransferData:
    return replace(data, source_x=standardize_digits(data.source_x), augment_source=False)


def _inverted(data: TransferData) -> TransferData:
    return replace(data, source_x=standardize_digits(1 - data.source_x), augment_source=False)


def _digits_0_to_4(data: TransferData) -> TransferData:
    keep = data.source_y < 5
    return replace(data, source_x=data.source_x[keep], source_y=data.source_y[keep],
                   source_names=data.source_names[:5])


@dataclass(frozen=True)
class Candidate:
    """A source model: pre-trained on ``source(digits task)`` for ``epochs`` (None: --epochs;
    0: not trained, the initial weights the others start from)."""

    description: str
    source: Callable[[TransferData], TransferData]
    epochs: int | None = None

    def pretrain_epochs(self, args) -> int:
        return args.epochs if self.epochs is None else self.epochs


CANDIDATES = {
    "inverted": Candidate("source digits inverted like the target's, not augmented", _inverted),
    "augmented": Candidate("the demo's source model: clean digits, augmented", _augmented),
    "clean": Candidate("clean digits, not augmented", _clean),
    "digits0-4": Candidate("clean digits 0-4 only (5 source classes), augmented", _digits_0_to_4),
    "2-epochs": Candidate("clean digits, augmented, 2 epochs only", _augmented, epochs=2),
    "random": Candidate("no pre-training: the initial weights, 10 random outputs", _augmented,
                        epochs=0),
}

# name → score of a candidate's target features, source-head probabilities and target labels.
SCORES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "LogME": lambda features, probabilities, y: log_me(features, y),
    "LEEP": lambda features, probabilities, y: leep(probabilities, y),
    "NCE": lambda features, probabilities, y: nce(probabilities.argmax(1), y),
    "H-score": lambda features, probabilities, y: h_score(features, y),
    "H-score LW": lambda features, probabilities, y: h_score(features, y, shrinkage=True),
}


def kendall_tau(x, y) -> float:
    """Kendall's τ-b of two equally long sequences: Σ_{i<j} s_ij t_ij / √(Σ s_ij² · Σ t_ij²) with
    s_ij = sign(x_i − x_j), t_ij = sign(y_i − y_j), i.e. (concordant − discordant pairs) over the
    geometric mean of the pairs untied in x and in y; in [−1, 1], NaN when either is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"kendall_tau needs two 1-D sequences of one length, got shapes "
                         f"{x.shape} and {y.shape}")
    i, j = np.triu_indices(len(x), k=1)
    s, t = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    untied = math.sqrt(float(np.sum(s * s) * np.sum(t * t)))
    return float(np.sum(s * t) / untied) if untied > 0 else math.nan


def ranks(values: list[float]) -> list[int]:
    """1 for the largest value; tied values share the better rank."""
    return [1 + sum(other > value for other in values) for value in values]


def add_rank_arguments(parser: argparse.ArgumentParser) -> None:
    """The rank command's options, added to ``parser``."""
    parser.add_argument("--candidates", nargs="+", choices=CANDIDATES, default=None,
                        metavar="NAME", help=f"source models to rank, among "
                        f"{', '.join(CANDIDATES)} (default: all)")
    parser.add_argument("--shots", type=_positive_int, default=10,
                        help="labelled target samples per class that the scores see and that "
                             "fine-tuning trains on (default 10)")
    parser.add_argument("--out", default="rank_out", help="folder for results.json")
    add_training_arguments(parser)
    parser.set_defaults(model="cnn", weights=None)


def run_rank(args: argparse.Namespace) -> int:
    """Rank the candidates; returns the process exit status (2 on bad input)."""
    return run_command("rank", _run, args)


def _note(args, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _source_model(item: tuple[str, argparse.Namespace, bool]) -> tuple[Classifier | None, str]:
    """Candidate ``name``'s source model (on the CPU) and how it was obtained; with
    ``cached_only``, (None, "") when it would have to be trained."""
    name, args, cached_only = item
    candidate, device = CANDIDATES[name], torch.device(args.device)
    data = candidate.source(digits_task())
    if candidate.epochs == 0:
        torch.manual_seed(args.pretrain_seed)  # as pretrain_source seeds the others' start
        model = build_model(args, data.source_x.shape[1], len(data.source_names))
        return model.eval(), "not trained"
    args = argparse.Namespace(**{**vars(args), "epochs": candidate.pretrain_epochs(args)})
    model, note = pretrain_source(data, args, device, cached_only)
    return (None if model is None else model.cpu()), note


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


@torch.no_grad()
def _scores(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    model.eval()
    features = model.features(x)
    probabilities = model.head(features).softmax(dim=1)
    return {name: float(score(features, probabilities, y)) for name, score in SCORES.items()}


def _run(args) -> int:
    start = time.perf_counter()
    device = resolve_device(args)
    names = list(dict.fromkeys(args.candidates or CANDIDATES))
    if len(names) < 2:
        raise DemoError(f"--candidates needs at least 2 source models to rank, got {names}")
    seeds = list(dict.fromkeys(args.seeds))
    data = digits_task()
    splits = {(args.shots, seed): target_split(data.target_y, args.shots, seed) for seed in seeds}

    # Cached (or untrained) candidates here; the others pre-trained side by side.
    sources = {name: _source_model((name, args, True)) for name in names}
    missing = [name for name, (model, _) in sources.items() if model is None]
    if missing:
        _note(args, f"pre-training {', '.join(missing)}")
        quiet = argparse.Namespace(**{**vars(args), "quiet": True})  # one bar, not one a worker
        trained = parallel_map(_source_model, [(name, quiet, False) for name in missing],
                               worker_count(args, device, len(missing)), not args.quiet,
                               "pre-training", _set_threads, (args.threads,))
        sources.update(zip(missing, trained))
    for name in names:
        _note(args, f"{name}: {sources[name][1]}")
    models = {name: model.to(device) for name, (model, _) in sources.items()}

    x, y = data.target_x.to(device), data.target_y.to(device)
    scores = {name: [] for name in names}
    for seed in seeds:
        train = splits[args.shots, seed]["train"].to(device)
        for name in names:
            scores[name].append(_scores(models[name], x[train], y[train]))

    jobs = [Job(name, "finetune", args.shots, seed) for name in names for seed in seeds]
    workers = worker_count(args, device, len(jobs))
    results = run_jobs(RunContext(args, data, models, splits), jobs, workers, not args.quiet)

    rows = []
    for name in names:
        runs = [results[Job(name, "finetune", args.shots, seed)] for seed in seeds]
        val = [r["val_accuracy"] for r in runs]
        rows.append({
            "candidate": name, "description": CANDIDATES[name].description,
            "source_classes": len(models[name].head.bias),
            "pretrain_epochs": CANDIDATES[name].pretrain_epochs(args),
            "scores": {s: statistics.fmean(seed_scores[s] for seed_scores in scores[name])
                       for s in SCORES},
            "val_accuracy_mean": statistics.fmean(val),
            "val_accuracy_std": statistics.stdev(val) if len(val) > 1 else 0.0,
            "test_accuracy_mean": statistics.fmean(r["test_accuracy"] for r in runs),
            "runs": [{"seed": seed, "scores": seed_scores, **run}
                     for seed, seed_scores, run in zip(seeds, scores[name], runs)],
        })
    accuracy = [row["val_accuracy_mean"] for row in rows]
    for row, rank in zip(rows, ranks(accuracy)):
        row["ranks"] = {"val_accuracy": rank}
    taus = {}
    for score in SCORES:
        values = [row["scores"][score] for row in rows]
        for row, rank in zip(rows, ranks(values)):
            row["ranks"][score] = rank
        taus[score] = kendall_tau(values, accuracy)
    total = time.perf_counter() - start
    meta = {
        "data": data.description, "shots": args.shots, "seeds": seeds, "steps": args.steps,
        "pretrain_epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
        "device": str(device), "torch_threads": torch.get_num_threads(), "workers": workers,
        "kendall_tau_b": taus, "total_seconds": total,
    }
    print(format_ranking(rows, taus, args.shots, len(seeds)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps({**meta, "candidates": rows}, indent=1) + "\n")
    print(f"total {total:.1f} s; wrote {path}")
    return 0


def format_ranking(rows: list[dict], taus: dict[str, float], shots: int, seeds: int) -> str:
    """One row per candidate: each score (its rank) and the fine-tuned validation accuracy (its
    rank), then Kendall's τ-b of each score's ranking against the accuracy's."""
    header = f"{'candidate':<11}" + "".join(f"{s:>14}" for s in SCORES) + f"{'val acc %':>17}"
    lines = [f"scores on the {shots}-shot target training sets, fine-tuned validation accuracy; "
             f"mean over {seeds} seed(s); (rank)", header, "-" * len(header)]
    for row in rows:
        line = f"{row['candidate']:<11}"
        for score in SCORES:
            line += f"{row['scores'][score]:>9.3f} ({row['ranks'][score]})"
        accuracy = f"{100 * row['val_accuracy_mean']:.1f} ± {100 * row['val_accuracy_std']:.1f}"
        lines.append(line + f"{accuracy:>13} ({row['ranks']['val_accuracy']})")
    lines.append(f"{'Kendall τ-b':<11}" + "".join(f"{taus[s]:>14.2f}" for s in SCORES))
    return "\n".join(lines)
