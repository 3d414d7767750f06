"""The test's plots (adkd.report.plots): the numbers behind each plot that are ours (histogram
counts, the operating point, the worst images, the pixel curve being pixel_ap's), and the plots/
folder of a tiny run. The image ROC and PR curves are scikit-learn's and not tested again here."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from adkd.report import plots
from tests.conftest import tiny_overrides


def test_histogram_counts_each_defect_type_in_shared_bins():
    scores = [0.0, 0.1, 0.3, 0.9, 1.0, 0.6, 0.95, float("nan")]
    labels = [0, 0, 0, 1, 1, 1, 1, 0]
    paths = [
        "t/good/0.png",
        "t/good/1.png",
        "t/good/2.png",
        "t/crack/0.png",
        "t/crack/1.png",
        "t/scratch/0.png",
        "t/scratch/1.png",
        "t/good/3.png",
    ]
    groups = plots.score_groups(labels, paths)
    assert groups == ["normal"] * 3 + ["crack", "crack", "scratch", "scratch", "normal"]
    edges, counts = plots.histogram_counts(scores, groups, bins=4)  # [0, .25) [.25, .5) [.5, .75) [.75, 1]
    np.testing.assert_allclose(edges, [0, 0.25, 0.5, 0.75, 1.0])
    assert list(counts) == ["normal", "crack", "scratch"]  # normal first; the NaN score is left out
    assert [c.tolist() for c in counts.values()] == [[2, 1, 0, 0], [0, 0, 0, 2], [0, 0, 1, 1]]
    assert len(plots.histogram_counts(np.linspace(0, 1, 400), ["normal"] * 400)[0]) == 21  # sqrt(400) bins


def test_operating_point_flags_scores_above_the_threshold():
    scores, labels = [0.1, 0.5, 0.7, 0.2, 0.5, 0.9], [0, 0, 0, 1, 1, 1]
    point = plots.operating_point(scores, labels, 0.5)  # flagged: 0.7 (normal), 0.9 (anomalous); 0.5 is not
    assert point == {"fpr": 1 / 3, "tpr": 1 / 3, "precision": 0.5}
    assert np.isnan(plots.operating_point(scores, labels, 1.0)["precision"])  # nothing flagged


def test_worst_cases_keep_the_highest_normal_and_lowest_anomalous_scores_in_order():
    rng = np.random.default_rng(2)
    scores, labels = rng.random(200).tolist(), rng.integers(0, 2, 200).tolist()
    scores[7] = scores[9] = 2.0  # a tie: the first seen comes first
    labels[7] = labels[9] = 0
    worst, made = plots.WorstCases(3), []

    def make(i: int) -> dict:
        made.append(i)
        return {"index": i, "pred_score": scores[i]}

    for i, (s, y) in enumerate(zip(scores, labels, strict=True)):
        worst.offer(s, y, lambda i=i: make(i))
    normal = sorted((i for i in range(200) if labels[i] == 0), key=lambda i: (-scores[i], i))
    anomalous = sorted((i for i in range(200) if labels[i] == 1), key=lambda i: scores[i])
    assert [s["index"] for s in worst.false_positives()] == normal[:3] and normal[:2] == [7, 9]
    assert [s["index"] for s in worst.false_negatives()] == anomalous[:3]
    assert len(made) < 40  # samples (pictures, maps) are made only for images entering a heap
    none = plots.WorstCases(0)
    none.offer(1.0, 0, lambda: pytest.fail("k=0 keeps nothing"))
    assert none.false_positives() == none.false_negatives() == []


def test_the_pixel_curve_is_the_one_behind_pixel_ap_over_three_batches():
    from adkd.metrics import AnomalyMetrics

    generator = torch.Generator().manual_seed(3)
    masks = (torch.rand(6, 1, 32, 32, generator=generator) < 0.1).int()
    maps = torch.randn(6, 1, 32, 32, generator=generator) + 1.5 * masks  # overlapping classes
    metrics = AnomalyMetrics()
    for i in range(0, 6, 2):
        metrics.update(
            maps[i : i + 2].flatten(1).amax(1), masks[i : i + 2].flatten(1).amax(1), maps[i : i + 2], masks[i : i + 2]
        )
    pixel_ap = metrics.compute()["pixel_ap"]
    precision, recall, thresholds = metrics.pixel_pr_curve(max_points=None)
    assert len(precision) == len(recall) == len(thresholds) + 1 > 2000  # every distinct score
    assert -np.sum(np.diff(recall) * precision[:-1]) == pytest.approx(pixel_ap, abs=1e-6)  # non-interpolated AP
    assert precision[0] == pytest.approx(float(masks.float().mean())) and recall[0] == 1.0  # everything flagged
    assert (precision[-1], recall[-1]) == (1.0, 0.0) and np.all(np.diff(thresholds) > 0)
    assert thresholds[-1] == pytest.approx(float(maps.max()))  # the map's own values: the pixel threshold's units

    drawn = metrics.pixel_pr_curve(max_points=500)  # thinned for drawing: points of the same curve, ends kept
    assert len(drawn[0]) <= 500 and len(drawn[2]) == len(drawn[0]) - 1
    index = np.searchsorted(thresholds, drawn[2])
    np.testing.assert_array_equal(thresholds[index], drawn[2])
    np.testing.assert_array_equal(precision[[*index, -1]], drawn[0])
    np.testing.assert_array_equal(recall[[*index, -1]], drawn[1])
    assert drawn[1][0] == 1.0 and np.max(-np.diff(drawn[1])) < 0.01  # no gap in recall wider than 1%

    normal_only = AnomalyMetrics()
    normal_only.update(torch.zeros(2), torch.zeros(2), maps[:2], torch.zeros_like(masks[:2]))
    assert normal_only.pixel_pr_curve() is None and AnomalyMetrics(pixel=False).pixel_pr_curve() is None


def test_a_tiny_run_writes_its_plots_from_its_own_numbers(tiny_mvtec, tmp_path, monkeypatch):
    """The curves drawn are the test's metrics; the worst false alarm is the highest-scoring normal
    image of test_predictions.csv, the worst escape the lowest-scoring anomalous one."""
    from adkd.training.config import compose
    from adkd.training.run import run

    drawn, samples = {}, {}
    plot_pr, draw_sample = plots.plot_pr, plots.draw_sample

    def spy_pr(precision, recall, ap, prevalence, point, title, path):  # noqa: ANN001, ANN202
        drawn[path.name] = ap, -np.sum(np.diff(recall) * precision[:-1])  # the AP written, the curve's own
        plot_pr(precision, recall, ap, prevalence, point, title, path)

    def spy_sample(post, sample, title, path):  # noqa: ANN001, ANN202
        samples[path.name] = (sample, title)
        draw_sample(post, sample, title, path)

    monkeypatch.setattr(plots, "plot_pr", spy_pr)
    monkeypatch.setattr(plots, "draw_sample", spy_sample)
    run(compose(tiny_overrides(tiny_mvtec, "method=stfpm", "num_figures=4"), tmp_path))
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == [
        "image_pr.png",
        "image_roc.png",
        "pixel_pr.csv",
        "pixel_pr.png",
        "score_histogram.png",
        "worst_fn_00.png",
        "worst_fn_01.png",
        "worst_fp_00.png",
        "worst_fp_01.png",
    ]
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "00_normal.png",
        "01_normal.png",
        "02_anomalous.png",
        "03_anomalous.png",
    ]
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert drawn["image_pr.png"] == pytest.approx((metrics["image_ap"],) * 2, abs=1e-6)  # scikit-learn's = ours
    assert drawn["pixel_pr.png"][0] == metrics["pixel_ap"]
    assert drawn["pixel_pr.png"][1] == pytest.approx(metrics["pixel_ap"], abs=0.01)  # the thinned curve drawn
    precision, recall, ap = plots.read_curve(tmp_path / "plots" / "pixel_pr.csv")  # what adkd.report overlays
    assert ap == pytest.approx(metrics["pixel_ap"], rel=1e-5) and recall[0] == 1 and recall[-1] == 0
    with (tmp_path / "test_predictions.csv").open() as f:
        rows = [{**r, "pred_score": float(r["pred_score"]), "gt_label": int(r["gt_label"])} for r in csv.DictReader(f)]
    normal = sorted((r for r in rows if r["gt_label"] == 0), key=lambda r: -r["pred_score"])
    anomalous = sorted((r for r in rows if r["gt_label"] == 1), key=lambda r: r["pred_score"])
    for prefix, expected in (("worst_fp", normal), ("worst_fn", anomalous)):
        for i in range(2):
            sample, title = samples[f"{prefix}_{i:02d}.png"]
            assert sample["image_path"] == expected[i]["image_path"]
            assert sample["pred_score"] == pytest.approx(expected[i]["pred_score"], rel=1e-6)
            assert sample["image"].shape == (3, 32, 32) and sample["anomaly_map"].shape == (32, 32)
            assert ("above the threshold" in title) or ("below the threshold" in title)  # the run is calibrated


def test_a_split_without_anomalies_and_an_uncalibrated_model_get_only_what_is_defined(tmp_path, monkeypatch):
    from adkd.methods.components.postprocess import PostProcessor

    titles = []
    monkeypatch.setattr(plots, "draw_sample", lambda post, sample, title, path: titles.append(title))
    predictions = [{"image_path": f"t/good/{i}.png", "gt_label": 0, "pred_score": float(i)} for i in range(5)]
    worst = plots.WorstCases(2)
    for p in predictions:
        worst.offer(p["pred_score"], 0, lambda p=p: dict(p))
    written = plots.write_plots(tmp_path, predictions, PostProcessor(), worst)
    assert [p.name for p in written] == ["score_histogram.png", "worst_fp_00.png", "worst_fp_01.png"]
    assert titles == ["normal, #1 highest score: good/4.png, score 4", "normal, #2 highest score: good/3.png, score 3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["score_histogram.png"]  # the overlays were stubbed out


def test_the_report_draws_every_runs_curves_per_category(tmp_path):
    """Two methods, one of them over two seeds: one line per run, named by its column (and seed
    where the column holds several), with the run's own AUROC and AP."""
    from sklearn.metrics import roc_auc_score

    from adkd.cli import main as adkd
    from adkd.report.curves import curve_lines

    rng = np.random.default_rng(0)
    labels = [0] * 6 + [1] * 6
    runs = {("rd4ad", 0): 0.5, ("adps", 0): 2.0, ("adps", 1): 1.0}  # how far the anomalous scores lie
    for i, ((method, seed), shift) in enumerate(runs.items()):
        run = tmp_path / str(i)
        (run / "plots").mkdir(parents=True)
        result = {
            "method": method,
            "label": method,
            "dataset": "folder",
            "category": "widget",
            "seed": seed,
            "metrics": {"image_auroc": 1.0},
        }
        (run / "metrics.json").write_text(json.dumps(result))
        scores = rng.normal(0, 1, 12) + shift * np.array(labels)
        rows = "".join(f"{run}/{y}.png,{y},{s}\n" for y, s in zip(labels, scores, strict=True))
        (run / "test_predictions.csv").write_text("image_path,gt_label,pred_score\n" + rows)
        plots.write_curve(run / "plots" / "pixel_pr.csv", np.array([0.1, 0.5, 1.0]), np.array([1.0, 0.5, 0.0]), 0.42)
        runs[(method, seed)] = roc_auc_score(labels, scores)
    lines = curve_lines(tmp_path)["widget"]
    assert [(name, auroc) for name, _, _, auroc in lines["image_roc"]] == [
        ("rd4ad", pytest.approx(runs[("rd4ad", 0)])),
        ("adps (seed 0)", pytest.approx(runs[("adps", 0)])),
        ("adps (seed 1)", pytest.approx(runs[("adps", 1)])),
    ]
    assert [ap for *_, ap in lines["pixel_pr"]] == [pytest.approx(0.42)] * 3
    assert adkd(["report", str(tmp_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "curves").iterdir()) == [
        "widget_image_pr.png",
        "widget_image_roc.png",
        "widget_pixel_pr.png",
    ]
