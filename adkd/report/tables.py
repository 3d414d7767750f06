"""Per-category results tables from run folders: a row per category plus the mean, a column
per method and metric, in Markdown and CSV."""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from pathlib import Path

from adkd.metrics.collection import IMAGE_METRICS, PIXEL_METRICS

DEFAULT_METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap")


def _natural_key(path: Path) -> list:
    """Digit runs compare as numbers, so multirun job 10 comes after job 2."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.as_posix())]


def collect(folder: Path) -> list[dict]:
    """Every ``metrics.json`` below ``folder`` (one per run of a multirun), in job order, so the
    table's rows and columns follow the order of the command line."""
    return [json.loads(p.read_text()) for p in sorted(Path(folder).rglob("metrics.json"), key=_natural_key)]


def build_table(results: list[dict], metrics: tuple[str, ...] = DEFAULT_METRICS) -> tuple[list[str], list[list[str]]]:
    """Header and rows (category, then method/metric columns; last row the mean over categories).

    Runs that share category and column (other seeds) are averaged; the mean row averages the
    categories' cells."""
    known = set(IMAGE_METRICS) | set(PIXEL_METRICS) | {"inference_ms_per_image"}
    unknown = set(metrics) - known
    if unknown:
        raise ValueError(f"Unknown metrics {sorted(unknown)}; known: {sorted(known)}")
    runs: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    methods, categories = [], []
    several_backbones = len({r.get("backbone") for r in results}) > 1
    for r in results:
        label = r.get("label") or r["method"]
        key = f"{label}/{r.get('backbone')}" if several_backbones else label
        if key not in methods:
            methods.append(key)
        if r["category"] not in categories:
            categories.append(r["category"])
        runs[(r["category"], key)].append(r["metrics"])
    cells = defaultdict(dict)  # (category, column) -> metric means over that cell's runs
    for cell, ms in runs.items():
        cells[cell] = {k: sum(m[k] for m in ms) / len(ms) for k in ms[0] if all(k in m for m in ms)}
    columns = [(m, k) for m in methods for k in metrics if any(k in cells[(c, m)] for c in categories)]
    header = ["category"] + [f"{m} {k}" for m, k in columns]
    rows = []
    for c in categories:
        rows.append([c] + [_fmt(cells[(c, m)].get(k)) for m, k in columns])
    means = []
    for m, k in columns:
        values = [cells[(c, m)][k] for c in categories if k in cells[(c, m)]]
        means.append(_fmt(sum(values) / len(values)) if len(values) == len(categories) else "n/a")
    rows.append(["mean"] + means)
    return header, rows


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}" if value <= 1.0 else f"{value:.1f}"


def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_report(
    folder: Path, metrics: tuple[str, ...] = DEFAULT_METRICS, out: Path | None = None
) -> tuple[Path, Path, str]:
    """Write ``results.md`` and ``results.csv`` for the runs below ``folder``; returns their paths
    and the Markdown text. Metrics are in percent (timings in ms)."""
    results = collect(folder)
    if not results:
        raise FileNotFoundError(f"No metrics.json below {folder}: is it a run or multirun folder?")
    datasets = sorted({r["dataset"] for r in results})
    header, rows = build_table(results, metrics)
    out = Path(out or folder)
    out.mkdir(parents=True, exist_ok=True)
    seeds = sorted({r.get("seed") for r in results if r.get("seed") is not None})
    averaged = f"; each cell the mean over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else ""
    md = f"Dataset: {', '.join(datasets)} ({len(results)} runs; values in %{averaged})\n\n" + to_markdown(header, rows)
    (out / "results.md").write_text(md)
    with (out / "results.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return out / "results.md", out / "results.csv", md
