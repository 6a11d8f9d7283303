"""Output: the results table and results.json, results.csv and results.png."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np


def format_table(summaries: list[dict], shots_list: list[int]) -> str:
    """One row per method: test accuracy (mean ± std over seeds) at each shot count, then the cost
    at the largest one (time per run, set-up, ms per step, overhead over fine-tuning)."""
    methods = list(dict.fromkeys(s["method"] for s in summaries))
    by_key = {(s["method"], s["shots"]): s for s in summaries}
    largest = shots_list[-1]
    header = f"{'method':<13}" + "".join(f"{f'{n}-shot acc %':>15}" for n in shots_list) + (
        f" {'time/run s':>10} {'set-up s':>8} {'ms/step':>7} {'overhead':>8}")
    lines = [f"target test accuracy (mean ± std over seeds); cost at {largest} shots", header,
             "-" * len(header)]
    for method in methods:
        row = f"{method:<13}"
        for shots in shots_list:
            s = by_key[method, shots]
            row += f"{100 * s['accuracy_mean']:>9.1f} ± {100 * s['accuracy_std']:>3.1f}"
        s = by_key[method, largest]
        overhead = s["overhead_ms_per_step"]
        overhead = "n/a" if overhead is None else f"{overhead:+.2f}"
        lines.append(row + f" {s['seconds_mean']:>10.2f} {s['setup_seconds_mean']:>8.2f} "
                           f"{s['ms_per_step']:>7.2f} {overhead:>8}")
    return "\n".join(lines)


def write_outputs(summaries: list[dict], meta: dict, out: Path) -> list[Path]:
    """results.json (everything), results.csv (one row per method and shot count) and results.png
    (the learning curves and the cost per step)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.csv", out / "results.png"]
    paths[0].write_text(json.dumps({**meta, "results": summaries}, indent=1) + "\n")
    columns = ["method", "shots", "accuracy_mean", "accuracy_std", "val_accuracy_mean", "seconds_mean", "setup_seconds_mean",
               "ms_per_step", "overhead_ms_per_step"]
    with paths[1].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summaries)
    _plot(summaries, meta, paths[2])
    return paths


def _plot(summaries: list[dict], meta: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    methods = list(dict.fromkeys(s["method"] for s in summaries))
    largest = max(meta["shots"])
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for method in methods:
        points = sorted((s for s in summaries if s["method"] == method), key=lambda s: s["shots"])
        left.errorbar([s["shots"] for s in points], [100 * s["accuracy_mean"] for s in points],
                      yerr=[100 * s["accuracy_std"] for s in points], marker="o", capsize=3,
                      label=method, linestyle="--" if method == "scratch" else "-")
    left.axhline(100 * meta["chance_accuracy"], color="gray", linewidth=0.8, label="chance")
    left.set_xscale("log")
    left.set_xticks(meta["shots"], [str(n) for n in meta["shots"]])
    left.set_xlabel("labelled target samples per class")
    left.set_ylabel("target test accuracy (%)")
    left.set_title(f"learning curves, {len(meta['seeds'])} seeds (mean ± std)")
    left.legend(fontsize=8, ncol=2)
    costs = [next(s for s in summaries if s["method"] == m and s["shots"] == largest)
             for m in methods]
    positions = np.arange(len(methods))
    bars = right.bar(positions, [s["ms_per_step"] for s in costs], color="tab:orange")
    right.bar_label(bars, fmt="%.1f")
    right.set_xticks(positions, methods, rotation=30, ha="right")
    right.set_ylabel("ms per training step")
    right.set_title(f"training cost at {largest} shots ({meta['device']})")
    for axis in (left, right):
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(f"transfer: {meta['data']}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
