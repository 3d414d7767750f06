"""Per-category results tables from run folders: a row per category plus the mean, a column
per method (or variant) and metric, in Markdown and CSV.

Runs are merged into one cell only when they differ in nothing but the seed: runs that differ in
any other setting (an override such as ``image_size=96``, a backbone, a label) get columns of
their own, named by what differs. Runs that did not finish are listed under the table.

A unified run (``category=all``: one model for every category) gives a row per category, from its
metrics.json's ``per_category``, in a column of its own labelled ``<label> (unified)``: one
table compares it with per-category runs of the same method (``-m category=a,b,all``).
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from adkd.metrics.names import (
    IMAGE_METRICS,
    KIND_MEAN,
    KIND_METRICS,
    PIXEL_METRICS,
    REGION_METRICS,
    SAMPLE_METRICS,
    SEGMENTATION_METRICS,
    THRESHOLD_METRICS,
)
from adkd.training.runs import read_status

DEFAULT_METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap")  # a dataset not in DATASET_METRICS
# What each benchmark's papers report, by the dataset's name (its conf/dataset/<name>.yaml): a table
# of runs on it shows these unless --metrics says otherwise; several datasets, their union in order.
DATASET_METRICS = {
    "mvtec": ("image_auroc", "pixel_auroc", "pixel_aupro"),  # MVTec AD: RD4AD, PatchCore, RD++, ...
    "visa": ("image_auroc", "pixel_auroc", "pixel_aupro"),
    "btad": ("image_auroc", "pixel_auroc", "pixel_aupro"),
    "mpdd": ("image_auroc", "pixel_auroc", "pixel_aupro"),
    "mvtec_ad2": ("pixel_aupro_005", "pixel_seg_f1"),  # MVTec AD 2's leaderboard: AU-PRO to FPR 0.05, SegF1
    # MVTec LOCO AD: image AUROC, for each kind of anomaly too, and AU-sPRO to FPR 0.05
    "mvtec_loco": (
        "image_auroc",
        "image_auroc_logical",
        "image_auroc_structural",
        "image_auroc_mean",
        "pixel_spro",
        "pixel_spro_mean",
    ),
    # Real-IAD: image AUROC, the multi-view protocol's sample AUROC (a part by its highest view), pixel
    "realiad": ("image_auroc", "sample_auroc", "pixel_auroc", "pixel_aupro"),
    "ksdd": ("image_auroc", "pixel_auroc", "pixel_ap"),  # KolektorSDD(2): pixel AP (ADPS, DRAEM)
    "ksdd2": ("image_auroc", "pixel_auroc", "pixel_ap"),
    "elpv": ("image_auroc", "image_ap", "image_f1max"),  # image labels only
    "textures": DEFAULT_METRICS,
    "cells": DEFAULT_METRICS,
    "parts": DEFAULT_METRICS,
}
TIME_METRICS = ("inference_ms_per_image",)
KNOWN_METRICS = (
    *IMAGE_METRICS,
    *PIXEL_METRICS,
    *REGION_METRICS,
    *KIND_METRICS.values(),
    KIND_MEAN,
    *SAMPLE_METRICS,
    *SEGMENTATION_METRICS,
    *THRESHOLD_METRICS,
    *TIME_METRICS,
)
# Settings that never split a column: rows are categories, cells average seeds, and the rest
# changes where a run runs or how it is logged, not what it computes.
NOT_A_VARIANT = (
    "category",
    "seed",
    "method",
    "label",
    "dataset.root",
    "logger",
    "experiment_name",
    "resume",
    "ckpt_path",
    "trainer",
    "dataset.num_workers",
    "checkpoint_every_n_steps",
    "hydra",
)
SETTINGS_IN_RESULTS = ("dataset", "backbone", "pretrained", "image_size", "max_epochs", "steps")
UNDERTRAINED = "†"  # a cell with a run that ended still learning (metrics.json's training.undertrained)


def _natural_key(path: Path) -> list:
    """Digit runs compare as numbers, so multirun job 10 comes after job 2."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.as_posix())]


def collect(folder: Path) -> list[dict]:
    """Every ``metrics.json`` below ``folder`` (one per run of a multirun), in job order, so the
    table's rows and columns follow the order of the command line."""
    return [result for _, result in collect_runs(folder)]


def collect_runs(folder: Path) -> list[tuple[Path, dict]]:
    """(run folder, its metrics.json) for every finished run below ``folder``, in job order; a
    unified run once per category (:func:`per_category`). A metrics.json that cannot be read as
    a run's results is left out, with a warning that names it (once)."""
    paths = sorted(Path(folder).rglob("metrics.json"), key=_natural_key)
    runs = []
    for path in paths:
        result, problem = read_results(path)
        if problem:
            if path not in _WARNED:
                _WARNED.add(path)
                print(f"warning: {path} left out of the report: {problem}", file=sys.stderr)
            continue
        runs += [(path.parent, r) for r in per_category(result)]
    return runs


_WARNED: set[Path] = set()


def read_results(path: Path) -> tuple[dict | None, str | None]:
    """A run's metrics.json, or what is wrong with it (unreadable, cut short, not a run's results)."""
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        return None, f"cannot be read ({err})"
    except ValueError as err:
        return None, f"is not valid JSON ({err}); the run's own results.md or its log may hold the numbers"
    if not isinstance(result, dict) or not isinstance(result.get("method"), str):
        return None, "is not a run's results (no method)"
    if not isinstance(result.get("metrics"), dict) and not isinstance(result.get("per_category"), dict):
        return None, "is not a run's results (no metrics)"
    return result, None


UNIFIED = "unified"


def per_category(result: dict) -> list[dict]:
    """A run's results as the table's rows see them: a unified run's (``protocol: unified``) as one
    result per category, with that category's metrics and its label marked ``(unified)``; any other as it is."""
    if result.get("protocol") != UNIFIED or not isinstance(result.get("per_category"), dict):
        return [result]
    label = f"{result.get('label') or result['method']} ({UNIFIED})"
    return [
        {
            **result,
            "category": category,
            "label": label,
            "metrics": section.get("metrics") or {},
            "thresholds": section.get("thresholds"),
        }
        for category, section in result["per_category"].items()
    ]


def unfinished(folder: Path) -> list[str]:
    """Runs below ``folder`` without results, each as 'path: status (why)'."""
    lines = []
    for status_file in sorted(Path(folder).rglob("status.json"), key=_natural_key):
        run = status_file.parent
        name = run.relative_to(folder) if run != Path(folder) else run
        if (run / "metrics.json").is_file():
            problem = read_results(run / "metrics.json")[1]
            if problem:
                lines.append(f"{name}: its metrics.json {problem.split(';')[0]}")
            continue
        status = read_status(run)
        state = status.get("status", "unknown")
        if state == "running":
            state = "never finished (killed, or still running)"
        why = status.get("error") or (f"resume from {status['checkpoint']}" if status.get("checkpoint") else "")
        lines.append(f"{name}: {state}" + (f" ({why})" if why else ""))
    return lines


def _settings(result: dict) -> dict[str, str]:
    """What a run was run with, apart from category and seed: its overrides and its main settings."""
    settings = {k: str(result[k]) for k in SETTINGS_IN_RESULTS if k in result}
    for override in result.get("overrides") or []:
        key, _, value = override.lstrip("+~").partition("=")
        if not key.startswith(NOT_A_VARIANT):
            settings[key] = value
    return settings


def column_names(results: list[dict]) -> list[str]:
    """One name per run: its label (or method), plus the settings in which runs of that label differ."""
    settings = [_settings(r) for r in results]
    labels = [r.get("label") or r["method"] for r in results]
    names = []
    for label, own in zip(labels, settings, strict=True):
        peers = [s for lab, s in zip(labels, settings, strict=True) if lab == label]
        varying = [k for k in own if any(p.get(k) != own[k] for p in peers)]
        varying += [k for p in peers for k in p if k not in own and k not in varying]
        names.append(" ".join([label, *(f"{k}={own.get(k, '-')}" for k in varying)]))
    return names


def default_metrics(results: list[dict]) -> tuple[str, ...]:
    """The metrics the papers of the runs' datasets report (:data:`DATASET_METRICS`), their union in
    the order the datasets first appear; :data:`DEFAULT_METRICS` for a dataset not listed."""
    chosen: list[str] = []
    for dataset in dict.fromkeys(str(r.get("dataset")) for r in results):
        chosen += [m for m in DATASET_METRICS.get(dataset, DEFAULT_METRICS) if m not in chosen]
    return tuple(chosen) or DEFAULT_METRICS


def cells_by_column(results: list[dict]) -> tuple[list[str], list[str], dict[tuple[str, str], dict]]:
    """(columns, categories, cells): every run's column (:func:`column_names`) and category in job
    order, and per (category, column) each metric averaged over the runs there (other seeds). A
    metric a run could not define (None) is left out of its cell's average; None where no run of
    the cell defined it."""
    runs: dict[tuple[str, str], list[dict]] = defaultdict(list)
    columns_seen, categories = [], []
    for r, name in zip(results, column_names(results), strict=True):
        category = str(r.get("category") or "-")
        columns_seen += [name] if name not in columns_seen else []
        categories += [category] if category not in categories else []
        runs[(category, name)].append(r)
    cells: dict[tuple[str, str], dict] = defaultdict(dict)
    for cell, rs in runs.items():
        ms = [r["metrics"] for r in rs]
        for k in {k for m in ms for k in m}:
            values = [m[k] for m in ms if m.get(k) is not None]
            cells[cell][k] = sum(values) / len(values) if values else None
        if any((r.get("training") or {}).get("undertrained") for r in rs):
            cells[cell]["undertrained"] = True  # not a metric: marks the cell's values (UNDERTRAINED)
    return columns_seen, categories, cells


def check_metrics(metrics: tuple[str, ...]) -> None:
    unknown = set(metrics) - set(KNOWN_METRICS)
    if unknown:
        raise ValueError(f"Unknown metrics {sorted(unknown)}; known: {sorted(KNOWN_METRICS)}")


def build_table(results: list[dict], metrics: tuple[str, ...] = DEFAULT_METRICS) -> tuple[list[str], list[list[str]]]:
    """Header and rows (category, then column/metric cells; last row the mean over categories).

    Runs that share category and column (other seeds) are averaged (:func:`cells_by_column`); a
    cell with no defined value reads "n/a", and so does a mean over categories with any "n/a"
    cell: undefined values never enter a mean."""
    check_metrics(metrics)
    columns_seen, categories, cells = cells_by_column(results)
    columns = [(m, k) for m in columns_seen for k in metrics if any(k in cells[(c, m)] for c in categories)]
    header = ["category"] + [f"{m} {k}" for m, k in columns]
    rows = [
        [c] + [_fmt(k, cells[(c, m)], k in cells[(c, m)]) + _mark(cells[(c, m)], k) for m, k in columns]
        for c in categories
    ]
    means = []
    for m, k in columns:
        values = [cells[(c, m)].get(k) for c in categories]
        complete = all(v is not None for v in values)
        means.append(_fmt(k, {k: sum(values) / len(values)} if complete else {}, True))
    rows.append(["mean"] + means)
    return header, rows


def _mark(cell: dict, metric: str) -> str:
    return UNDERTRAINED if cell.get("undertrained") and cell.get(metric) is not None else ""


def _fmt(metric: str, cell: dict, present: bool) -> str:
    """By the metric's kind: times in ms as they are, scores in percent; '-' where a run did not
    report the metric, 'n/a' where it was undefined."""
    if not present:
        return "-"
    value = cell.get(metric)
    if value is None:
        return "n/a"
    return f"{value:.2f}" if metric in TIME_METRICS else f"{100 * value:.1f}"


def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def finished_runs(folder: Path) -> tuple[list[dict], list[str]]:
    """The results below ``folder`` and the runs without results; a clear error when there is no
    folder or no finished run."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"{folder} is not a folder" if Path(folder).exists() else f"{folder} does not exist")
    results = collect(folder)
    missing = unfinished(folder)
    if not results:
        listed = "\n  ".join(["", *missing]) if missing else ""
        raise FileNotFoundError(f"No finished run (metrics.json) below {folder}.{listed}")
    return results, missing


def write_report(
    folder: Path, metrics: tuple[str, ...] | None = None, out: Path | None = None
) -> tuple[Path, Path, str]:
    """Write ``results.md`` and ``results.csv`` for the runs below ``folder``; returns their paths
    and the Markdown text. ``metrics``: None for those the datasets' papers report
    (:func:`default_metrics`)."""
    results, missing = finished_runs(folder)
    datasets = sorted({str(r.get("dataset")) for r in results})
    header, rows = build_table(results, metrics or default_metrics(results))
    out = Path(out or folder)
    out.mkdir(parents=True, exist_ok=True)
    seeds = sorted({r.get("seed") for r in results if r.get("seed") is not None})
    averaged = f"; each cell the mean over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else ""
    units = "scores in %, times in ms"
    runs = len({run for run, _ in collect_runs(folder)})  # a unified run is one run of several rows
    md = f"Dataset: {', '.join(datasets)} ({runs} runs; {units}{averaged})\n\n" + to_markdown(header, rows)
    if any(UNDERTRAINED in cell for row in rows for cell in row):
        md += (
            f"\n{UNDERTRAINED} A run of this cell ended still learning (its loss still falling steeply, or its "
            "validation not settled: metrics.json's training.undertrained): train it longer (steps=, max_epochs=) "
            "before comparing.\n"
        )
    if missing:
        md += f"\nNot in the table ({len(missing)} runs without results):\n" + "".join(f"- {m}\n" for m in missing)
    (out / "results.md").write_text(md)
    with (out / "results.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return out / "results.md", out / "results.csv", md
