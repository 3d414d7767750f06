"""A paper's table beside ours: ``adkd report <sweep> --paper <name>`` writes
``paper_<name>.md`` and ``paper_<name>.csv``, in the paper's layout (its datasets, its category
order, its metrics), each cell holding our value, the published value and the difference in points.

The published numbers are ``published/published.csv`` (package data): one row per number, with the
paper, its table, the dataset and category (adkd's names), the method (adkd's name where adkd has the
method, else the paper's spelling), the metric (adkd's name), the value in % and its source. Only
numbers read in a source are there; where a paper's per-category table could not be read, only its
means are, and the source says so.

A run belongs to a published method when its label (by default its method) is that name
(``label=efficientad_m`` for a row named so), and to its dataset by metrics.json's ``dataset``. Runs
that differ only in the seed are averaged; runs that differ in a setting get a column each
(:func:`adkd.report.tables.column_names`). The mean row is recomputed from the category rows, over
the categories where both sides have a value (how many is said when not all); a mean the paper
printed is shown in a row of its own. Where the paper printed only a metric's mean, ours beside it
is the mean over every category run.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from adkd.methods.registry import method_names
from adkd.report.tables import cells_by_column, column_names, finished_runs, to_markdown

PUBLISHED = Path(__file__).with_name("published") / "published.csv"
MEAN = "mean"  # the category of a mean as the paper printed it
NOTES = {  # what a reader must know to read a paper's numbers beside ours
    "dhkd": "The README's printed averages do not all match its rows (Rkd's image AUROC rows average 98.47, "
    "printed 98.2): the mean row is recomputed from the rows, the printed one shown as printed. Its methods "
    "that adkd does not have (Arnet, Padim, Cflow, ...) are left out.",
    "patchcore": "The authors' released WR50 model (224 px crop of 256, 10% coreset), not the paper's per-class "
    "tables (not read here). Its PRO is over the anomalous test images only, by code that is not public; adkd's "
    "AU-PRO is over all test images: not the same measure.",
    "adps": "Means only: the paper's tables are images and could not be read.",
    "efficientad": "Means only, as an unofficial implementation's README quotes the paper; a run labelled "
    "efficientad_m is compared with EfficientAD-M. Its MVTec LOCO AD figure is read as the dataset's official "
    "detection number, the mean of the logical and structural image AUROC (image_auroc_mean); the README does not "
    "say which AUROC it is, and the paper's per-category LOCO table (AU-sPRO included) was not read here.",
    "draem": "Per-category pixel AUROC and AP from the paper's table 2; its image AUROC table was not read here, "
    "so image AUROC is its mean only (our mean over every category run beside it).",
    "destseg": "Per-category pixel AUROC and AP from the paper's table 2 (DeSTSeg: mean of 5 seeds). Its STPM, "
    "DRAEM and PatchCore columns are the authors' official models re-evaluated by the DeSTSeg authors, masks "
    "resized to 256 px; its methods that adkd does not have (US, CutPaste, DSR) are left out. Image AUROC: table "
    "1's means only (the per-category table is in the supplementary material, not read here).",
    "uninet": "Not the paper's tables: the official repository's logs (saved_results/<dataset>/log.txt, the "
    "separate-class table: one model per class), its released checkpoints tested again after the code was "
    "reorganised; its saved_results README says they differ slightly from the paper's. Those checkpoints are chosen "
    "on the test set: the official training scores the test set every 10 epochs, keeps the checkpoint with the best "
    "test AU-PRO (BEST_P_PRO) and stops early when test AU-PRO stops rising, so each number is the best of training, "
    "not a last epoch's as adkd's are. Its code rounds each cell to 0.1 (VisA's printed means too). The paper's "
    "per-category one-class tables were not read; its one-class means, as the README's figure shows them (I-AUROC / "
    "P-AUROC / PRO): MVTec AD 99.90 / 98.81 / 96.00 (the log's: 99.89 / 98.82 / 96.06), BTAD 97.73 / 97.70 / no PRO "
    "(the log's: 97.93 / 97.67 / 80.17); no one-class VisA number is printed there. Its multi-class tables (one "
    "model for all classes: the logs' other table, the README's last figure) are left out.",
    **dict.fromkeys(("rd4ad", "rdpp"), "Means only: the paper's per-category tables could not be read here."),
}


@dataclass(frozen=True)
class Published:
    paper: str
    table: str
    dataset: str
    category: str
    method: str
    metric: str
    value: float
    source: str


def published(path: Path = PUBLISHED) -> list[Published]:
    with Path(path).open(newline="") as f:
        return [Published(**{**row, "value": float(row["value"])}) for row in csv.DictReader(f)]


def paper_names(path: Path = PUBLISHED) -> list[str]:
    return list(dict.fromkeys(p.paper for p in published(path)))


def _first_seen(values) -> list:  # noqa: ANN001
    return list(dict.fromkeys(values))


def _own_methods(paper: str, numbers: list[Published], results: list[dict]) -> list[str]:
    """The paper's methods that adkd can compare: the paper's own (its name, or its name and a
    variant: ``efficientad_m``), those adkd has (conf/method/), and any a run is labelled with."""
    known = set(method_names()) | {r.get("label") for r in results} | {r.get("method") for r in results}
    methods = _first_seen(p.method for p in numbers)
    return [m for m in methods if m == paper or m.startswith(f"{paper}_") or m in known]


def paper_table(results: list[dict], paper: str, numbers: list[Published]) -> tuple[str, list[dict]]:
    """Markdown for ``paper`` and its rows for the CSV (one per category, column and metric)."""
    numbers = [p for p in numbers if p.paper == paper]
    if not numbers:
        raise ValueError(f"No published numbers for {paper!r}; known: {', '.join(paper_names())}")
    methods = _own_methods(paper, numbers, results)
    blocks, rows = [], []
    sources = _first_seen(_table_of(p.source) for p in numbers if p.method in methods)  # cell's: the CSV
    for dataset in _first_seen(p.dataset for p in numbers):
        here = [p for p in numbers if p.dataset == dataset and p.method in methods]
        runs = [r for r in results if str(r.get("dataset")) == dataset]
        block, block_rows = _dataset_block(dataset, here, runs, methods)
        blocks.append(block)
        rows += block_rows
    title = f"{paper}: ours / published (ours - published, points); scores in %"
    note = f"{NOTES[paper]}\n\n" if paper in NOTES else ""
    md = f"{title}\n\n{note}" + "\n".join(blocks)
    md += "\nSources (each number's in paper_<name>.csv):\n" + "".join(f"- {s}\n" for s in sources)
    return md, rows


def _table_of(source: str) -> str:
    """A number's source without its row and column: the table it is in."""
    return re.split(r", (?:row|column) '", source)[0]


def _dataset_block(
    dataset: str, numbers: list[Published], runs: list[dict], methods: list[str]
) -> tuple[str, list[dict]]:
    categories = _first_seen(p.category for p in numbers if p.category != MEAN)
    value = {(p.category, p.method, p.metric): p for p in numbers}
    _, _, cells = cells_by_column(runs) if runs else ([], [], {})
    columns = _columns_of(runs, methods)
    comparisons = [
        (m, column, k)
        for m in methods
        for k in _first_seen(p.metric for p in numbers)
        if any(key[1:] == (m, k) for key in value)
        for column in columns[m] or [None]
    ]
    header = ["category"] + [f"{column or m + ' (no run)'} {k}" for m, column, k in comparisons]
    table, csv_rows = [], []
    for category in categories:
        line = [category]
        for m, column, k in comparisons:
            ours = cells[(category, column)].get(k, NOT_REPORTED) if (category, column) in cells else NO_RUN
            theirs = value.get((category, m, k))
            line.append(_cell(ours, theirs))
            csv_rows.append(_csv_row(dataset, category, m, column, k, ours, theirs))
        table.append(line)
    printed = [value.get((MEAN, m, k)) for m, _, k in comparisons]
    line = ["mean"]
    for (m, column, k), theirs in zip(comparisons, printed, strict=True):
        if any((c, m, k) in value for c in categories):
            line.append(_recomputed_mean(cells, column, categories, value, m, k))
        elif theirs is not None:  # the paper printed only this metric's mean: ours over every category run
            ours, count = _mean_over_runs(cells, column, k)
            counted = f" [{count} categor{'y' if count == 1 else 'ies'}]" if count else ""
            line.append(_cell(ours, theirs) + counted)
            csv_rows.append(_csv_row(dataset, MEAN, m, column, k, ours, theirs))
        else:
            line.append("-")
    table.append(line)
    if any(printed) and categories:  # a printed mean beside the recomputed one: as printed
        table.append(["mean (printed)"] + ["" if p is None else f"{p.value:.1f}" for p in printed])
    return f"Dataset: {dataset}\n\n" + to_markdown(header, table), csv_rows


class _Missing:
    """Why a cell has no value of ours (None, by contrast: the run could not define the metric)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


NO_RUN = _Missing("no run")  # no run has the cell
NOT_REPORTED = _Missing("-")  # the cell's runs did not report the metric


def _columns_of(runs: list[dict], methods: list[str]) -> dict[str, list[str]]:
    """Each published method's columns: those of the runs whose label (by default the method's
    name) is its name; ``label=efficientad_m`` for EfficientAD-M, and an ablation's own label keeps
    it out."""
    columns: dict[str, list[str]] = defaultdict(list)
    for r, name in zip(runs, column_names(runs), strict=True):
        m = r.get("label") or r.get("method")
        if m in methods and name not in columns[m]:
            columns[m].append(name)
    return columns


def _mean_over_runs(cells: dict, column: str | None, metric: str) -> tuple[float | None | _Missing, int]:
    """The column's mean of ``metric`` over every category it has, and how many categories."""
    here = [cell for (_, col), cell in cells.items() if column is not None and col == column]
    values = [cell[metric] for cell in here if metric in cell]
    if not here or not values:
        return (NO_RUN if not here else NOT_REPORTED), 0
    return (None if None in values else sum(values) / len(values)), len(values)


def _recomputed_mean(
    cells: dict, column: str | None, categories: list[str], value: dict, method: str, metric: str
) -> str:
    """Both means over the categories where both sides have a value; how many, where not all."""
    both = [
        c for c in categories if (c, method, metric) in value and cells.get((c, column), {}).get(metric) is not None
    ]
    if not both:
        return "-"
    ours = 100 * sum(cells[(c, column)][metric] for c in both) / len(both)
    theirs = sum(value[(c, method, metric)].value for c in both) / len(both)
    count = "" if len(both) == len(categories) else f" [{len(both)} of {len(categories)}]"
    return f"{ours:.1f} / {theirs:.1f} ({ours - theirs:+.1f}){count}"


def _cell(ours: float | None | _Missing, theirs: Published | None) -> str:
    """'ours / published (difference)': 'no run' where no run has the cell, '-' where its runs did not
    report the metric or the paper has no number, 'n/a' where the run could not define the metric."""
    mine = ours.text if isinstance(ours, _Missing) else "n/a" if ours is None else f"{100 * ours:.1f}"
    paper = "-" if theirs is None else f"{theirs.value:.1f}"
    both = isinstance(ours, float) and theirs is not None
    return f"{mine} / {paper}" + (f" ({100 * ours - theirs.value:+.1f})" if both else "")


def _csv_row(
    dataset: str,
    category: str,
    method: str,
    column: str | None,
    metric: str,
    ours: float | None | _Missing,
    theirs: Published | None,
) -> dict:
    mine = round(100 * ours, 4) if isinstance(ours, float) else None
    paper = None if theirs is None else theirs.value
    return {
        "dataset": dataset,
        "category": category,
        "method": method,
        "column": column or "",
        "metric": metric,
        "ours": mine,
        "published": paper,
        "difference": None if mine is None or paper is None else round(mine - paper, 4),
        "run": {NO_RUN: "no run", NOT_REPORTED: "not reported", None: "n/a"}.get(ours, "ok"),
        "source": "" if theirs is None else theirs.source,
    }


def write_paper(folder: Path, paper: str, out: Path | None = None) -> tuple[Path, Path, str]:
    """``paper_<paper>.md`` and ``.csv`` for the runs below ``folder``; returns their paths and the text."""
    results, missing = finished_runs(folder)
    md, rows = paper_table(results, paper, published())
    if missing:
        md += f"\nNot in the table ({len(missing)} runs without results):\n" + "".join(f"- {m}\n" for m in missing)
    out = Path(out or folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"paper_{paper}.md").write_text(md)
    with (out / f"paper_{paper}.csv").open("w", newline="") as f:
        fields = [
            "dataset",
            "category",
            "method",
            "column",
            "metric",
            "ours",
            "published",
            "difference",
            "run",
            "source",
        ]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return out / f"paper_{paper}.md", out / f"paper_{paper}.csv", md
