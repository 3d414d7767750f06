"""The test's curves of every run of a sweep, per category, one line per run: image ROC, image
precision-recall and, where the runs have masks, pixel precision-recall (``curves/`` beside
``results.md``). Lines are named like the table's columns (plus the seed where a column holds
several), so a method's curve sits beside the others it is compared with.

The image curves come from each run's ``test_predictions.csv`` (scikit-learn's curves, as the
run's own plots); the pixel curve from its ``plots/pixel_pr.csv`` (:func:`adkd.report.plots.write_curve`).
A unified run's are its category's rows of the CSV and ``plots/<category>/pixel_pr.csv``.
"""

from __future__ import annotations

import csv
import itertools
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from adkd.report.plots import new_figure, read_curve
from adkd.report.tables import UNIFIED, collect_runs, column_names


def _image_scores(run: Path, category: str | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Labels and scores of a run's test images (a unified run's ``category``'s)."""
    path = run / "test_predictions.csv"
    if not path.is_file():
        return None
    rows = [r for r in csv.DictReader(path.open()) if category is None or r.get("category") == category]
    return (np.array([int(r["gt_label"]) for r in rows]), np.array([float(r["pred_score"]) for r in rows]))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "category"


def curve_lines(folder: Path) -> dict[str, dict[str, list[tuple]]]:
    """category -> ``image_roc`` | ``image_pr`` | ``pixel_pr`` -> one (name, x, y, area) per run
    below ``folder``; a run without both classes in its test split has no image curves."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    runs = collect_runs(folder)
    if not runs:
        return {}
    names = column_names([result for _, result in runs])
    seeds = defaultdict(set)
    for (_, result), name in zip(runs, names, strict=True):
        seeds[(str(result.get("category")), name)].add(result.get("seed"))
    lines: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))  # category -> curve -> lines
    for (run, result), name in zip(runs, names, strict=True):
        category = str(result.get("category") or "-")
        label = name + (f" (seed {result.get('seed')})" if len(seeds[(category, name)]) > 1 else "")
        unified = result.get("protocol") == UNIFIED
        scores = _image_scores(run, category if unified else None)
        if scores is not None and 0 < scores[0].sum() < len(scores[0]):
            labels, values = scores
            fpr, tpr, _ = roc_curve(labels, values)
            lines[category]["image_roc"].append((label, fpr, tpr, roc_auc_score(labels, values)))
            precision, recall, _ = precision_recall_curve(labels, values)
            lines[category]["image_pr"].append((label, recall, precision, average_precision_score(labels, values)))
        pixel = run / "plots" / (category if unified else "") / "pixel_pr.csv"
        if pixel.is_file():
            precision, recall, ap = read_curve(pixel)
            lines[category]["pixel_pr"].append((label, recall, precision, ap))
    return lines


def write_curves(folder: Path, out: Path) -> list[Path]:
    """:func:`curve_lines` of the runs below ``folder`` drawn into ``out/curves``, a figure per
    category and curve; returns the files written."""
    lines = curve_lines(folder)
    target = out / "curves"
    written = []
    titles = {
        "image_roc": ("image ROC", "false-positive rate", "true-positive rate", "AUROC"),
        "image_pr": ("image precision-recall", "recall", "precision", "AP"),
        "pixel_pr": ("pixel precision-recall", "recall", "precision", "AP"),
    }
    for category, curves in lines.items():
        for kind, entries in curves.items():
            title, xlabel, ylabel, area = titles[kind]
            figure, ax = new_figure()
            colours = itertools.cycle(f"C{i}" for i in range(10))
            for label, x, y, value in entries:
                style = {"drawstyle": "steps-post"} if kind.endswith("_pr") else {}
                ax.plot(x, y, color=next(colours), linewidth=1.2, label=f"{label}: {area} {value:.3f}", **style)
            if kind == "image_roc":
                ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
            ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{category}: {title}", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
            ax.legend(fontsize=7, loc="lower right" if kind == "image_roc" else "lower left")
            target.mkdir(parents=True, exist_ok=True)
            path = target / f"{_safe(category)}_{kind}.png"
            figure.savefig(path)
            written.append(path)
    return written
