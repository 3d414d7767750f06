"""`adkd report <sweep> --paper <name>` on toy sweeps (run folders holding only metrics.json),
the published numbers it reads, and which metrics a dataset's table shows by default."""

import csv
import json
from pathlib import Path

import pytest

from adkd.cli import main as adkd
from adkd.report.paper import MEAN, paper_names, published
from adkd.report.tables import KNOWN_METRICS, default_metrics

MVTEC = [
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
]


def sweep(folder: Path, runs: list[dict]) -> Path:
    """A multirun folder: one numbered job per run, each with its metrics.json."""
    for job, run in enumerate(runs):
        (folder / str(job)).mkdir(parents=True)
        result = {"seed": 0, "overrides": [], **run}
        (folder / str(job) / "metrics.json").write_text(json.dumps(result))
    return folder


def run(method: str, category: str, dataset: str = "mvtec", label: str | None = None, **metrics: float | None) -> dict:
    return {"method": method, "label": label or method, "dataset": dataset, "category": category, "metrics": metrics}


def table_rows(md: str) -> dict[str, list[str]]:
    """The Markdown table's rows by their first cell."""
    rows = [line.strip("| ").split(" | ") for line in md.splitlines() if line.startswith("| ")]
    return {row[0]: row[1:] for row in rows}


def test_dhkd_table_in_its_layout_with_ours_published_and_difference(tmp_path):
    sweep(
        tmp_path,
        [
            run("dhkd", "grid", image_auroc=0.990, pixel_auroc=0.975),
            run("dhkd", "tile", image_auroc=0.97, pixel_auroc=None),
            run("rd4ad", "grid", image_auroc=0.995),
            run("dhkd", "grid", dataset="folder", image_auroc=0.1),  # another dataset: not in the table
        ],
    )
    assert adkd(["report", str(tmp_path), "--paper", "dhkd"]) == 0
    md = (tmp_path / "paper_dhkd.md").read_text()
    rows = table_rows(md)
    # the README's category order, its spellings mapped ("Mental nut" -> metal_nut), then the means
    assert list(rows)[1:] == [
        "grid",
        "leather",
        "tile",
        "carpet",
        "wood",
        "bottle",
        "capsule",
        "pill",
        "transistor",
        "zipper",
        "cable",
        "hazelnut",
        "metal_nut",
        "screw",
        "toothbrush",
        "mean",
        "mean (printed)",
    ]
    header = rows["category"]
    assert header == [
        "draem (no run) image_auroc",
        "stfpm (no run) image_auroc",
        "rd4ad image_auroc",
        "rd4ad pixel_auroc",
        "dhkd image_auroc",
        "dhkd pixel_auroc",
    ]
    cell = dict(zip(header, rows["grid"], strict=True))
    assert cell["dhkd image_auroc"] == "99.0 / 99.8 (-0.8)"  # DHKD README: Grid, Ours, 99.8
    assert cell["dhkd pixel_auroc"] == "97.5 / 98.1 (-0.6)"
    assert cell["rd4ad image_auroc"] == "99.5 / 100.0 (-0.5)"  # Rkd, Grid: 100
    assert cell["rd4ad pixel_auroc"] == "- / 99.3"  # the run did not report pixel AUROC
    assert cell["stfpm (no run) image_auroc"] == "no run / 100.0"
    tile = dict(zip(header, rows["tile"], strict=True))
    assert tile["dhkd pixel_auroc"] == "n/a / 97.4" and tile["dhkd image_auroc"] == "97.0 / 99.3 (-2.3)"
    mean = dict(zip(header, rows["mean"], strict=True))
    assert mean["dhkd image_auroc"] == "98.0 / 99.5 (-1.5) [2 of 15]"  # grid and tile: (99.8 + 99.3) / 2
    assert mean["dhkd pixel_auroc"] == "97.5 / 98.1 (-0.6) [1 of 15]"  # tile's n/a stays out
    assert dict(zip(header, rows["mean (printed)"], strict=True))["rd4ad image_auroc"] == "98.2"  # as printed
    with (tmp_path / "paper_dhkd.csv").open() as f:
        written = {(r["category"], r["method"], r["metric"]): r for r in csv.DictReader(f)}
    grid = written[("grid", "dhkd", "image_auroc")]
    assert (float(grid["ours"]), float(grid["published"])) == (99.0, 99.8)
    assert float(grid["difference"]) == pytest.approx(-0.8)
    assert "row 'Grid', column 'Ours'" in grid["source"]
    assert written[("metal_nut", "rd4ad", "image_auroc")]["run"] == "no run"


def test_the_mean_is_recomputed_from_the_rows_not_taken_as_printed(tmp_path):
    rows = [p for p in published() if (p.paper, p.method, p.metric) == ("dhkd", "rd4ad", "image_auroc")]
    runs = [run("rd4ad", p.category, image_auroc=(p.value + 1) / 100) for p in rows if p.category != MEAN]
    assert adkd(["report", str(sweep(tmp_path, runs)), "--paper", "dhkd"]) == 0
    rows = table_rows((tmp_path / "paper_dhkd.md").read_text())
    mean = dict(zip(rows["category"], rows["mean"], strict=True))["rd4ad image_auroc"]
    assert mean == "99.5 / 98.5 (+1.0)"  # the 15 rows average 98.47; printed: 98.2
    assert dict(zip(rows["category"], rows["mean (printed)"], strict=True))["rd4ad image_auroc"] == "98.2"


def test_a_paper_with_means_only_compares_our_mean_and_says_over_what(tmp_path):
    sweep(
        tmp_path,
        [
            run("rd4ad", "grid", image_auroc=0.99, pixel_aupro=0.92, pixel_auroc=None),
            run("rd4ad", "tile", image_auroc=0.97, pixel_aupro=0.90, pixel_auroc=None),
            run("rd4ad", "grid", label="rd4ad-ablation", image_auroc=0.5),  # its own label: not the paper's method
        ],
    )
    assert adkd(["report", str(tmp_path), "--paper", "rd4ad"]) == 0
    rows = table_rows((tmp_path / "paper_rd4ad.md").read_text())
    assert rows["category"] == ["rd4ad image_auroc", "rd4ad pixel_auroc", "rd4ad pixel_aupro"]
    assert rows["mean"] == [
        "98.0 / 98.5 (-0.5) [2 categories]",
        "n/a / 97.8 [2 categories]",
        "91.0 / 93.9 (-2.9) [2 categories]",
    ]


def test_a_variant_is_matched_by_its_label_and_a_missing_paper_is_refused(tmp_path, capsys):
    sweep(
        tmp_path,
        [
            run("efficientad", "grid", image_auroc=0.985),
            run("efficientad", "grid", label="efficientad_m", image_auroc=0.995),
            run("efficientad", "breakfast_box", dataset="mvtec_loco", image_auroc_mean=0.885),
        ],
    )
    assert adkd(["report", str(tmp_path), "--paper", "efficientad"]) == 0
    mvtec, loco = (tmp_path / "paper_efficientad.md").read_text().split("Dataset: mvtec_loco")
    rows = table_rows(mvtec)
    assert rows["mean"] == ["98.5 / 98.8 (-0.3) [1 category]", "99.5 / 99.1 (+0.4) [1 category]"]
    # MVTec LOCO AD: the mean of the two kinds' image AUROC beside the paper's (EfficientAD-M: no run)
    assert table_rows(loco)["mean"] == ["88.5 / 90.0 (-1.5) [1 category]", "no run / 90.7"]
    assert adkd(["report", str(tmp_path / "nowhere"), "--paper", "adps"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_adps_on_kolektorsdd2_is_a_category_row(tmp_path):
    sweep(tmp_path, [run("adps", "ksdd2", dataset="ksdd2", pixel_ap=0.70)])
    assert adkd(["report", str(tmp_path), "--paper", "adps", "--out", str(tmp_path / "tables")]) == 0
    md = (tmp_path / "tables" / "paper_adps.md").read_text()
    assert "| ksdd2 | 70.0 / 72.5 (-2.5) |" in md and "| mean | no run / 77.4 |" in md


def test_every_published_number_has_a_source_a_known_metric_and_a_percentage():
    numbers = published()
    assert set(paper_names()) == {
        "dhkd",
        "patchcore",
        "rd4ad",
        "rdpp",
        "destseg",
        "draem",
        "efficientad",
        "adps",
        "uninet",
    }
    assert all(p.source and p.metric in KNOWN_METRICS and 0 < p.value <= 100 for p in numbers)
    assert all(p.category in [*MVTEC, MEAN] for p in numbers if p.dataset == "mvtec")
    keys = [(p.paper, p.dataset, p.category, p.method, p.metric) for p in numbers]
    assert len(keys) == len(set(keys))  # one number per cell
    # DHKD's two README tables, every cell of the shared copy (15 categories + Average)
    dhkd = [p for p in numbers if p.paper == "dhkd"]
    assert len(dhkd) == 16 * 9 + 16 * 8
    assert {p.value for p in dhkd if (p.category, p.method, p.metric) == ("metal_nut", "dhkd", "pixel_auroc")} == {99.5}
    patchcore = {(p.category, p.metric): p.value for p in numbers if p.paper == "patchcore"}
    assert patchcore[("transistor", "pixel_aupro")] == 83.24 and patchcore[("mean", "image_auroc")] == 99.16


def test_a_datasets_table_shows_the_metrics_its_papers_report():
    assert default_metrics([{"dataset": "mvtec"}]) == ("image_auroc", "pixel_auroc", "pixel_aupro")
    assert default_metrics([{"dataset": "mvtec_ad2"}]) == ("pixel_aupro_005", "pixel_seg_f1")
    assert default_metrics([{"dataset": "ksdd2"}, {"dataset": "mvtec"}]) == (
        "image_auroc",
        "pixel_auroc",
        "pixel_ap",
        "pixel_aupro",
    )
    assert default_metrics([{"dataset": "folder"}]) == ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap")


def test_the_report_picks_the_datasets_metrics_unless_told(tmp_path):
    metrics = {"image_auroc": 0.9, "pixel_aupro_005": 0.41, "pixel_seg_f1": 0.33}
    sweep(tmp_path, [run("rd4ad", "vial", dataset="mvtec_ad2", **metrics)])
    assert adkd(["report", str(tmp_path), "--no-curves"]) == 0
    md = (tmp_path / "results.md").read_text()
    assert "| category | rd4ad pixel_aupro_005 | rd4ad pixel_seg_f1 |" in md and "| vial | 41.0 | 33.0 |" in md
    assert adkd(["report", str(tmp_path), "--no-curves", "--metrics", "image_auroc"]) == 0
    assert "| vial | 90.0 |" in (tmp_path / "results.md").read_text()


def test_the_report_cli_loads_neither_torch_nor_anomalib_for_its_tables():
    """An experiment script calls the report once per table: its tables and paper tables read only
    metrics.json (the curves, drawn after, load what they need)."""
    import subprocess
    import sys

    probe = "import sys, adkd.cli.report; print(sorted({'torch', 'anomalib', 'lightning'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("paper", "methods"), [("draem", ["draem"]), ("destseg", ["destseg", "stfpm", "draem", "patchcore"])]
)
def test_a_papers_category_rows_average_to_its_printed_mean(paper, methods):
    """Each per-category table as transcribed: 15 categories per column, averaging to the printed mean
    within the rounding (each cell and the mean to 0.1), which a slip in one cell would break."""
    numbers = [p for p in published() if p.paper == paper and p.dataset == "mvtec"]
    for method in methods:
        for metric in ("pixel_auroc", "pixel_ap"):
            rows = [p.value for p in numbers if (p.method, p.metric) == (method, metric) and p.category != MEAN]
            (printed,) = [p.value for p in numbers if (p.category, p.method, p.metric) == (MEAN, method, metric)]
            assert len(rows) == 15, (method, metric)
            assert abs(sum(rows) / 15 - printed) <= 0.1 + 1e-9, (method, metric, sum(rows) / 15, printed)


def test_draem_per_category_cells_and_a_mean_only_metric_beside_our_mean(tmp_path):
    sweep(
        tmp_path,
        [
            run("draem", "grid", image_auroc=0.97, pixel_auroc=0.99, pixel_ap=0.60),
            run("draem", "tile", image_auroc=0.99, pixel_auroc=0.98, pixel_ap=0.90),
        ],
    )
    assert adkd(["report", str(tmp_path), "--paper", "draem"]) == 0
    rows = table_rows((tmp_path / "paper_draem.md").read_text())
    assert rows["category"] == ["draem pixel_auroc", "draem pixel_ap", "draem image_auroc"]
    assert list(rows)[1:4] == ["bottle", "capsule", "grid"]  # table 2's row order
    assert rows["grid"] == ["99.0 / 99.7 (-0.7)", "60.0 / 65.7 (-5.7)", "97.0 / -"]  # DRAEM table 2: grid 99.7 / 65.7
    assert rows["tile"][:2] == ["98.0 / 99.2 (-1.2)", "90.0 / 92.3 (-2.3)"]
    # pixel metrics over grid and tile (99.45 printed as 99.5); image AUROC: only its mean was read, ours over both runs
    assert rows["mean"] == [
        "98.5 / 99.5 (-1.0) [2 of 15]",
        "75.0 / 79.0 (-4.0) [2 of 15]",
        "98.0 / 98.0 (+0.0) [2 categories]",
    ]
    assert rows["mean (printed)"] == ["97.3", "68.4", "98.0"]


def test_destseg_shows_its_reevaluated_columns_adkd_has(tmp_path):
    sweep(tmp_path, [run("destseg", "transistor", pixel_auroc=0.90, pixel_ap=0.60, image_auroc=0.95)])
    assert adkd(["report", str(tmp_path), "--paper", "destseg"]) == 0
    md = (tmp_path / "paper_destseg.md").read_text()
    rows = table_rows(md)
    cell = dict(zip(rows["category"], rows["transistor"], strict=True))
    assert cell["destseg pixel_auroc"] == "90.0 / 89.1 (+0.9)" and cell["destseg pixel_ap"] == "60.0 / 64.8 (-4.8)"
    assert cell["draem (no run) pixel_ap"] == "no run / 51.7" and cell["stfpm (no run) pixel_auroc"] == "no run / 81.9"
    assert not any("US" in h or "DSR" in h for h in rows["category"])
    assert dict(zip(rows["category"], rows["mean"], strict=True))["destseg image_auroc"] == (
        "95.0 / 98.6 (-3.6) [1 category]"
    )
    assert "- DeSTSeg (Zhang et al., CVPR 2023; arXiv 2211.11317), table 2 (pixel AUROC / AP)\n" in md


def test_uninet_log_tables_as_transcribed_and_beside_ours(tmp_path):
    """The official logs' separate-class tables: every class, rows that average to the printed mean
    (MVTec AD and BTAD printed to 0.01, VisA to 0.1; each cell to 0.1), and a cell beside ours."""
    numbers = [p for p in published() if p.paper == "uninet"]
    sizes = {"mvtec": (15, 0.005), "visa": (12, 0.05), "btad": (3, 0.005)}
    for dataset, (count, rounding) in sizes.items():
        for metric in ("image_auroc", "pixel_auroc", "pixel_aupro"):
            here = [p for p in numbers if (p.dataset, p.metric) == (dataset, metric)]
            rows = [p.value for p in here if p.category != MEAN]
            (printed,) = [p.value for p in here if p.category == MEAN]
            assert len(rows) == count, (dataset, metric)
            assert abs(sum(rows) / count - printed) <= rounding + 1e-9, (dataset, metric, sum(rows) / count)
    cell = {(p.dataset, p.category, p.metric): p.value for p in numbers}
    assert cell[("mvtec", "transistor", "pixel_aupro")] == 94.8 and cell[("visa", "chewinggum", "pixel_aupro")] == 83.2
    sweep(tmp_path, [run("uninet", "tile", image_auroc=0.98, pixel_auroc=0.96, pixel_aupro=0.90)])
    assert adkd(["report", str(tmp_path), "--paper", "uninet"]) == 0
    md = (tmp_path / "paper_uninet.md").read_text()
    rows = table_rows(md.split("Dataset: visa")[0])
    assert list(rows)[1:3] == ["carpet", "bottle"]  # the log's row order
    assert rows["tile"] == ["98.0 / 99.2 (-1.2)", "96.0 / 97.5 (-1.5)", "90.0 / 91.0 (-1.0)"]
    assert rows["mean (printed)"] == ["99.9", "98.8", "96.1"]
    assert "BEST_P_PRO" in md and "Dataset: btad" in md
