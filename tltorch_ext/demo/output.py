"""Output: the results table and results.json, results.csv and results.png."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np


def format_table(summaries: list[dict]) -> str:
    header = (f"{'method':<10} {'target acc (mean ± std)':>24} {'time/run s':>11} "
              f"{'set-up s':>9} {'ms/step':>8} {'overhead ms/step':>17}")
    lines = [header, "-" * len(header)]
    for s in summaries:
        overhead = s["overhead_ms_per_step"]
        overhead = "n/a" if overhead is None else f"{overhead:+.2f}"
        lines.append(
            f"{s['method']:<10} {100 * s['accuracy_mean']:>15.1f} ± "
            f"{100 * s['accuracy_std']:4.1f} % "
            f"{s['seconds_mean']:>11.2f} {s['setup_seconds_mean']:>9.2f} {s['ms_per_step']:>8.2f} "
            f"{overhead:>17}"
        )
    return "\n".join(lines)


def write_outputs(summaries: list[dict], meta: dict, out: Path) -> list[Path]:
    """results.json (everything), results.csv (one row per method) and results.png (bar charts)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.csv", out / "results.png"]
    paths[0].write_text(json.dumps({**meta, "results": summaries}, indent=1) + "\n")
    columns = ["method", "accuracy_mean", "accuracy_std", "seconds_mean", "setup_seconds_mean",
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

    names = [s["method"] for s in summaries]
    positions = np.arange(len(names))
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    bars = left.bar(positions, [100 * s["accuracy_mean"] for s in summaries],
                    yerr=[100 * s["accuracy_std"] for s in summaries], capsize=4, color="tab:blue")
    left.bar_label(bars, fmt="%.1f", label_type="center", color="white")
    left.set_ylim(bottom=100 * meta["chance_accuracy"])
    left.set_ylabel("target test accuracy (%) (axis from chance)")
    left.set_title(f"{meta['shots']} shots per class, {len(meta['seeds'])} seeds (mean ± std)")
    bars = right.bar(positions, [s["ms_per_step"] for s in summaries], color="tab:orange")
    right.bar_label(bars, fmt="%.2f")
    right.set_ylabel("ms per training step")
    right.set_title(f"training cost ({meta['device']})")
    for axis in (left, right):
        axis.set_xticks(positions, names, rotation=30, ha="right")
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(f"fine-tuning on {meta['data']}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
