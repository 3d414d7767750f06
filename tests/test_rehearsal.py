"""A dress rehearsal of the papers' protocols before hours of GPU time: ``experiments/adps_paper.sh`` and
``experiments/dhkd_mvtec.sh`` run end to end with bash, as a researcher runs them, on replicas of the
released layouts (tests/replicas.py: every MVTec AD category, KolektorSDD, KolektorSDD2) and at toy size
through their pass-through overrides (:data:`TOY`). What is checked is what a long run must not fail on:
the datasets' paths and categories, the config keys, and every table at the end, whose values are read
back against the runs' metrics.json and the published numbers. The scores themselves mean nothing here.

``pytest -m slow tests/test_rehearsal.py`` (or ``make test-all``): 3 min 37 s and 4 min 18 s in two runs on 2 CPU
cores shared with other jobs (load average 4 to 5), of which ADPS's script 135-156 s and DHKD's 66-87 s.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adkd.data.folder import MVTecADDataModule
from adkd.report.paper import published
from adkd.report.tables import DATASET_METRICS
from tests import replicas

REPO = Path(__file__).resolve().parents[1]
MVTEC_CATEGORIES = MVTecADDataModule.categories  # the reader's list: the scripts must run every one
# tests/conftest.py's tiny_overrides at the scripts' level: the toy size, the CPU, a random teacher that
# needs no download. dataset.num_workers=0 saves starting loader processes in 32 runs; the real run
# keeps its workers and its image cache (left on here).
TOY = [
    "trainer=cpu",
    "backbone=mobilenet_v2",
    "backbone.pretrained=false",
    "image_size=32",
    "max_epochs=1",
    "batch_size=4",
    "dataset.num_workers=0",
    "logger=none",
    "num_figures=2",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """The three datasets in their released layouts; six MVTec AD training images a category, so that
    validation holds one (its thresholds are set as a real run sets them)."""
    root = tmp_path_factory.mktemp("replicas")
    return {
        "mvtec": replicas.mvtec_ad(root / "mvtec", MVTEC_CATEGORIES, n_train=6),
        "ksdd": replicas.ksdd(root / "ksdd"),
        "ksdd2": replicas.ksdd2(root / "ksdd2"),
    }


def run_script(script: str, out: Path, *arguments: Path | str) -> str:
    """``OUT=<out> bash experiments/<script> <arguments> <TOY>`` with this environment's python first on
    PATH; its output, or a failure showing the end of it."""
    env = {
        **os.environ,
        "OUT": str(out),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    done = subprocess.run(
        ["bash", f"experiments/{script}", *map(str, arguments), *TOY],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{script} failed ({done.returncode}):\n{output[-6000:]}"
    return output


def finished_runs(sweep: Path) -> dict[str, dict]:
    """Each job's metrics.json below ``sweep`` by category; every job folder must have finished."""
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    for job in jobs:
        assert json.loads((job / "status.json").read_text())["status"] == "finished", job
    results = [json.loads((job / "metrics.json").read_text()) for job in jobs]
    by_category = {r["category"]: r for r in results}
    assert len(by_category) == len(results), "two runs of one category"
    return by_category


def table(path: Path) -> dict[str, dict[str, str]]:
    """results.csv as {category: {column: cell}}, the mean row under "mean"."""
    with path.open(newline="") as f:
        return {row["category"]: row for row in csv.DictReader(f)}


def check_table(sweep: Path, runs: dict[str, dict], metrics: tuple[str, ...], method: str) -> None:
    """results.csv: a row per category and the mean, a column per metric, each cell the run's value in %."""
    rows = table(sweep / "results.csv")
    assert list(rows) == [*runs, "mean"]
    for category, run in runs.items():
        for metric in metrics:
            assert rows[category][f"{method} {metric}"] == f"{100 * run['metrics'][metric]:.1f}", (category, metric)
    assert (sweep / "results.md").is_file()


def paper_cells(path: Path) -> dict[tuple[str, str, str, str], dict[str, str]]:
    """paper_<name>.csv by (dataset, category, column, metric), the cells of our runs only."""
    with path.open(newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["run"] != "no run"]
    return {(r["dataset"], r["category"], r["column"], r["metric"]): r for r in rows}


def published_value(paper: str, dataset: str, category: str, method: str, metric: str) -> float:
    (value,) = [
        p.value
        for p in published()
        if (p.paper, p.dataset, p.category, p.method, p.metric) == (paper, dataset, category, method, metric)
    ]
    return value


@pytest.mark.slow
def test_adps_paper_protocol_end_to_end(data, tmp_path):
    """ADPS on the 15 MVTec AD categories, KolektorSDD and KolektorSDD2: a finished run each, a table
    per dataset with its papers' metrics (MVTec AD's with pixel AP), and paper_adps with ours beside the
    published pixel AP (the paper's means only: MVTec AD over the 15 categories, KolektorSDD2).
    135-156 s on 2 shared CPU cores."""
    out = tmp_path / "adps_paper"
    output = run_script("adps_paper.sh", out, data["mvtec"], data["ksdd"], data["ksdd2"])
    for category in MVTEC_CATEGORIES:  # the data check listed every dataset before the first run
        assert f"mvtec/{category}: 5 training, 1 validation, 5 test images (3 anomalous)" in output
    assert "ksdd/ksdd: 13 training, 2 validation, 8 test images (3 anomalous)" in output

    runs = {dataset: finished_runs(out / dataset) for dataset in ("mvtec", "ksdd", "ksdd2")}
    assert sorted(runs["mvtec"]) == sorted(MVTEC_CATEGORIES)
    assert list(runs["ksdd"]) == ["ksdd"] and list(runs["ksdd2"]) == ["ksdd2"]
    for dataset, by_category in runs.items():
        assert {(r["method"], r["dataset"], r["max_epochs"]) for r in by_category.values()} == {("adps", dataset, 1)}
    check_table(out / "mvtec", runs["mvtec"], ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap"), "adps")
    check_table(out / "ksdd", runs["ksdd"], DATASET_METRICS["ksdd"], "adps")
    check_table(out / "ksdd2", runs["ksdd2"], DATASET_METRICS["ksdd2"], "adps")

    cells = paper_cells(out / "paper_adps.csv")
    assert set(cells) == {("mvtec", "mean", "adps", "pixel_ap"), ("ksdd2", "ksdd2", "adps", "pixel_ap")}
    mvtec_mean = 100 * sum(r["metrics"]["pixel_ap"] for r in runs["mvtec"].values()) / len(MVTEC_CATEGORIES)
    ksdd2 = 100 * runs["ksdd2"]["ksdd2"]["metrics"]["pixel_ap"]
    for *key, ours, theirs in (("mvtec", "mean", mvtec_mean, 77.4), ("ksdd2", "ksdd2", ksdd2, 72.5)):
        cell = cells[(*key, "adps", "pixel_ap")]
        assert float(cell["ours"]) == pytest.approx(ours, abs=1e-4) and float(cell["published"]) == theirs
        assert float(cell["difference"]) == pytest.approx(ours - theirs, abs=1e-3) and cell["run"] == "ok"
    assert "[15 categories]" in (out / "paper_adps.md").read_text()


@pytest.mark.slow
def test_dhkd_mvtec_protocol_end_to_end(data, tmp_path):
    """DHKD on the 15 MVTec AD categories: a finished run each, the table with MVTec AD's metrics, and
    paper_dhkd with ours beside the published image and pixel AUROC in every category's cell.
    66-87 s on 2 shared CPU cores."""
    out = tmp_path / "dhkd_mvtec"
    run_script("dhkd_mvtec.sh", out, data["mvtec"])
    runs = finished_runs(out)
    assert sorted(runs) == sorted(MVTEC_CATEGORIES)
    assert {(r["method"], r["dataset"]) for r in runs.values()} == {("dhkd", "mvtec")}
    check_table(out, runs, DATASET_METRICS["mvtec"], "dhkd")

    cells = paper_cells(out / "paper_dhkd.csv")
    for category, run in runs.items():
        for metric in ("image_auroc", "pixel_auroc"):
            cell = cells[("mvtec", category, "dhkd", metric)]
            assert cell["run"] == "ok" and float(cell["ours"]) == pytest.approx(100 * run["metrics"][metric], abs=1e-4)
            assert float(cell["published"]) == published_value("dhkd", "mvtec", category, "dhkd", metric)
    assert len(cells) == 2 * len(MVTEC_CATEGORIES)
