"""The test's plots (``plots/`` in the run folder): where the scores of normal images and of each
defect type lie against the threshold, the image ROC and precision-recall curves, the pixel
precision-recall curve, and the worst false alarms and escapes drawn as overlays.

The image curves and their areas are scikit-learn's; the pixel curve is the one behind
``pixel_ap`` (:meth:`adkd.metrics.AnomalyMetrics.pixel_pr_curve`), drawn with ``pixel_ap`` itself.
Only the ``k`` worst images of each kind are kept (:class:`WorstCases`). The curves are drawn with
matplotlib's Agg canvas (no pyplot, no display, no global state).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from adkd.report.panels import overlay

if TYPE_CHECKING:
    import torch

NORMAL = "normal"
log = logging.getLogger(__name__)


# -- image scores -------------------------------------------------------------------------------


def score_groups(labels: Sequence[int], image_paths: Sequence[str]) -> list[str]:
    """``normal`` for a normal image, the defect type (the image's folder name) for an anomalous one."""
    return [Path(p).parent.name if y else NORMAL for y, p in zip(labels, image_paths, strict=True)]


def histogram_counts(
    scores: Sequence[float], groups: Sequence[str], bins: int | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Shared bin edges over all finite scores and each group's counts in them: ``normal`` first,
    then the defect types in alphabetical order. ``bins``: sqrt(n) clipped to [10, 50] by default."""
    scores, groups = np.asarray(scores, np.float64), np.asarray(groups, dtype=object)
    finite = np.isfinite(scores)
    scores, groups = scores[finite], groups[finite]
    bins = bins or int(np.clip(round(math.sqrt(len(scores))), 10, 50))
    edges = np.histogram_bin_edges(scores, bins)
    names = sorted(set(groups.tolist()), key=lambda g: (g != NORMAL, g))
    return edges, {g: np.histogram(scores[groups == g], edges)[0] for g in names}


def operating_point(scores: Sequence[float], labels: Sequence[int], threshold: float) -> dict[str, float]:
    """FPR, TPR (recall) and precision when score > ``threshold`` flags an image (as the test's
    image_f1 etc.); NaN where undefined."""
    flagged, labels = np.asarray(scores) > threshold, np.asarray(labels).astype(bool)
    tp, fp = int((flagged & labels).sum()), int((flagged & ~labels).sum())
    ratio = lambda a, b: a / b if b else math.nan  # noqa: E731
    return {
        "fpr": ratio(fp, int((~labels).sum())),
        "tpr": ratio(tp, int(labels.sum())),
        "precision": ratio(tp, tp + fp),
    }


# -- the worst images ---------------------------------------------------------------------------


class WorstCases:
    """The ``k`` normal images with the highest scores (the worst false alarms) and the ``k``
    anomalous images with the lowest (the worst escapes), in two bounded heaps: an image's sample
    (its picture and map) is only made, by ``make``, when it enters one. Ties: the first seen wins."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._heaps: tuple[list, list] = ([], [])  # by label; the heap's root is the first to go
        self._seen = itertools.count()

    def offer(self, score: float, label: int, make: Callable[[], dict]) -> None:
        if self.k <= 0 or math.isnan(score):
            return
        heap = self._heaps[int(bool(label))]
        key = (score if not label else -score, -next(self._seen))  # higher = worse; unique, so dicts never compare
        if len(heap) < self.k:
            heapq.heappush(heap, (key, make()))
        elif key > heap[0][0]:
            heapq.heapreplace(heap, (key, make()))

    def false_positives(self) -> list[dict]:
        """The normal images, highest score first."""
        return [s for _, s in sorted(self._heaps[0], key=lambda e: e[0], reverse=True)]

    def false_negatives(self) -> list[dict]:
        """The anomalous images, lowest score first."""
        return [s for _, s in sorted(self._heaps[1], key=lambda e: e[0], reverse=True)]


def draw_sample(post: torch.nn.Module, sample: dict, title: str, path: Path) -> None:
    """One sample (``image``, ``anomaly_map``, ``gt_mask``, ``pred_score``) as the three-panel
    overlay of :mod:`adkd.report.panels`, normalised by ``post`` where it is calibrated."""
    import torch  # here, not above: the report's curves (adkd report) need no torch

    device = post.image_threshold.device
    normalized_map, normalized = post.normalize(
        sample["anomaly_map"][None].to(device), torch.tensor([sample["pred_score"]], device=device)
    )
    calibrated = bool(torch.isfinite(normalized).all())
    if calibrated:
        title += f" (normalised {float(normalized):.2f})"
    overlay(
        sample["image"].clamp(0, 1).permute(1, 2, 0).numpy(),
        normalized_map[0].cpu().numpy() if calibrated else None,
        title,
        path,
        alarm=calibrated and float(normalized) > 0.5,
        truth=sample["gt_mask"].numpy() > 0.5,
    )


# -- drawing ------------------------------------------------------------------------------------


def new_figure():  # noqa: ANN202
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def plot_histogram(edges: np.ndarray, counts: dict[str, np.ndarray], threshold: float | None, path: Path) -> None:
    figure, ax = new_figure()
    colours = itertools.cycle(f"C{i}" for i in range(1, 10))
    for group, n in counts.items():
        colour = "C0" if group == NORMAL else next(colours)
        ax.stairs(n, edges, fill=True, alpha=0.3, color=colour)
        ax.stairs(n, edges, color=colour, linewidth=1.2, label=f"{group} ({int(n.sum())})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.4g}")
    ax.set(xlabel="image score", ylabel="images", title="test image scores")
    ax.legend(fontsize=8)
    figure.savefig(path)


def plot_roc(
    fpr: np.ndarray, tpr: np.ndarray, auroc: float, point: dict | None, threshold: float | None, path: Path
) -> None:
    figure, ax = new_figure()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.plot(fpr, tpr, color="C0", label=f"AUROC {auroc:.3f}")
    if point is not None:
        ax.plot(
            point["fpr"],
            point["tpr"],
            "o",
            color="C3",
            label=f"threshold {threshold:.4g}: FPR {point['fpr']:.2f}, TPR {point['tpr']:.2f}",
        )
    ax.set(
        xlabel="false-positive rate (normal images flagged)",
        ylabel="true-positive rate (anomalies found)",
        title="image ROC",
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.02),
    )
    ax.legend(fontsize=8, loc="lower right")
    figure.savefig(path)


def plot_pr(
    precision: np.ndarray, recall: np.ndarray, ap: float, prevalence: float, point: dict | None, title: str, path: Path
) -> None:
    """A precision-recall curve (recall falling, as scikit-learn and torchmetrics return it),
    stepped as its AP counts it; the operating ``point`` marked unless its precision is NaN
    (nothing flagged)."""
    figure, ax = new_figure()
    ax.axhline(prevalence, color="grey", linestyle=":", linewidth=1, label=f"chance {prevalence:.3f}")
    ax.plot(recall, precision, color="C0", drawstyle="steps-post", label=f"AP {ap:.3f}")
    if point is not None and not math.isnan(point["precision"]):
        ax.plot(
            point["tpr"],
            point["precision"],
            "o",
            color="C3",
            label=f"threshold: precision {point['precision']:.2f}, recall {point['tpr']:.2f}",
        )
    ax.set(xlabel="recall", ylabel="precision", title=title, xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    ax.legend(fontsize=8)
    figure.savefig(path)


def write_plots(
    folder: Path,
    predictions: list[dict],
    post: torch.nn.Module,
    worst: WorstCases,
    pixel_curve: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    pixel_ap: float | None = None,
) -> list[Path]:
    """Every plot of the test into ``folder``; returns the files written. ``predictions``: one
    dict an image (``image_path``, ``gt_label``, ``pred_score``); ``pixel_curve`` and ``pixel_ap``:
    :meth:`adkd.metrics.AnomalyMetrics.pixel_pr_curve` and the metric (None: no pixel curve). A
    curve the split cannot define (ROC without both classes, PR without anomalies) is left out."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    folder.mkdir(parents=True, exist_ok=True)
    scores = np.array([p["pred_score"] for p in predictions], np.float64)
    labels = np.array([p["gt_label"] for p in predictions], np.int64)
    threshold = float(post.image_threshold) if post.calibrated else None
    written = []
    if len(scores):
        edges, counts = histogram_counts(scores, score_groups(labels, [p["image_path"] for p in predictions]))
        plot_histogram(edges, counts, threshold, folder / "score_histogram.png")
        written.append(folder / "score_histogram.png")
    anomalous, normal = int(labels.sum()), int((labels == 0).sum())
    point = operating_point(scores, labels, threshold) if threshold is not None else None
    if anomalous and normal:
        fpr, tpr, _ = roc_curve(labels, scores)
        plot_roc(fpr, tpr, roc_auc_score(labels, scores), point, threshold, folder / "image_roc.png")
        written.append(folder / "image_roc.png")
    if anomalous:
        precision, recall, _ = precision_recall_curve(labels, scores)
        plot_pr(
            precision,
            recall,
            average_precision_score(labels, scores),
            anomalous / len(labels),
            point,
            "image precision-recall",
            folder / "image_pr.png",
        )
        written.append(folder / "image_pr.png")
    else:
        log.info("No anomalous test images: no ROC or precision-recall curve in %s", folder)
    if pixel_curve is not None and pixel_ap is not None:
        precision, recall, thresholds = pixel_curve  # precision[0]: every pixel flagged, the share of anomalous ones
        pixel_point = None
        if post.calibrated and len(thresholds):  # the curve's point at the pixel threshold (map >= threshold)
            i = min(int(np.searchsorted(thresholds, float(post.pixel_threshold))), len(thresholds) - 1)
            pixel_point = {"precision": float(precision[i]), "tpr": float(recall[i])}
        plot_pr(
            precision,
            recall,
            pixel_ap,
            float(precision[0]),
            pixel_point,
            "pixel precision-recall",
            folder / "pixel_pr.png",
        )
        written.append(folder / "pixel_pr.png")
        write_curve(folder / "pixel_pr.csv", precision, recall, pixel_ap)  # for adkd.report's curves across runs
    for prefix, rank, samples in (
        ("worst_fp", "normal, #{} highest score", worst.false_positives()),
        ("worst_fn", "anomalous, #{} lowest score", worst.false_negatives()),
    ):
        for i, sample in enumerate(samples):
            written.append(folder / f"{prefix}_{i:02d}.png")
            draw_sample(post, sample, _worst_title(rank.format(i + 1), sample, threshold), written[-1])
    return written


CURVE_POINTS = 2000


def write_curve(path: Path, precision: np.ndarray, recall: np.ndarray, ap: float) -> None:
    """A precision-recall curve as CSV (``recall,precision``; at most :data:`CURVE_POINTS` of its
    points, evenly by index, both ends kept), its AP on the first line as a comment."""
    keep = np.unique(np.linspace(0, len(recall) - 1, min(len(recall), CURVE_POINTS)).round().astype(int))
    rows = "\n".join(
        f"{r:.6g},{p:.6g}" for r, p in zip(np.asarray(recall)[keep], np.asarray(precision)[keep], strict=True)
    )
    path.write_text(f"# ap={ap:.6g}\nrecall,precision\n{rows}\n")


def read_curve(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """(precision, recall, AP) as :func:`write_curve` wrote them."""
    lines = path.read_text().splitlines()
    ap = float(lines[0].split("=", 1)[1])
    values = np.array([[float(v) for v in line.split(",")] for line in lines[2:] if line], np.float64).reshape(-1, 2)
    return values[:, 1], values[:, 0], ap


def _worst_title(rank: str, sample: dict, threshold: float | None) -> str:
    path, score = Path(sample["image_path"]), sample["pred_score"]
    where = "" if threshold is None else f", {'above' if score > threshold else 'below'} the threshold"
    return f"{rank}{where}: {path.parent.name}/{path.name}, score {score:.4g}"
