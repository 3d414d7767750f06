"""The test's plots (``plots/`` in the run folder): where the scores of normal images and of each
defect type lie against the threshold, the image ROC and precision-recall curves, the pixel
precision-recall curve, and the worst false alarms and escapes drawn as overlays.

Everything here is bounded in memory whatever the test set's size: the image scores are one
number an image, the pixel curve is two histograms (:class:`BinnedPRCurve`), and only the
``k`` worst images of each kind are kept (:class:`WorstCases`). The curves are drawn with
matplotlib's Agg canvas (no pyplot, no display, no global state).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
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


def roc_points(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, thresholds decreasing from +inf (nothing
    flagged); an image is flagged when its score is >= the threshold."""
    tps, fps, thresholds = _counts_by_threshold(scores, labels)
    return np.r_[0.0, fps] / max(fps[-1], 1), np.r_[0.0, tps] / max(tps[-1], 1), np.r_[np.inf, thresholds]


def pr_points(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) with thresholds increasing, then the end point (1, 0)."""
    tps, fps, thresholds = _counts_by_threshold(scores, labels)
    precision, recall = tps / (tps + fps), tps / max(tps[-1], 1)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def _counts_by_threshold(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, ...]:
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # the last image of each distinct score
    tps = np.cumsum(labels)[last].astype(np.float64)
    return tps, last + 1 - tps, scores[last]


def area_under_roc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Sum of precision times the recall gained at each threshold (no interpolation); recall decreasing."""
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def operating_point(scores: Sequence[float], labels: Sequence[int], threshold: float) -> dict[str, float]:
    """FPR, TPR (recall) and precision when score > ``threshold`` flags an image (as the test's
    image_f1 etc.); NaN where undefined."""
    flagged, labels = np.asarray(scores) > threshold, np.asarray(labels).astype(bool)
    tp, fp = int((flagged & labels).sum()), int((flagged & ~labels).sum())
    ratio = lambda a, b: a / b if b else math.nan  # noqa: E731
    return {"fpr": ratio(fp, int((~labels).sum())), "tpr": ratio(tp, int(labels.sum())),
            "precision": ratio(tp, tp + fp)}  # fmt: skip


# -- pixels -------------------------------------------------------------------------------------


class BinnedPRCurve:
    """The pixel precision-recall curve at ``bins`` fixed thresholds, accumulated batch by batch as
    two histograms (anomalous and normal pixels): memory O(bins) however many pixels are scored.

    A value x is squashed monotonically into (0, 1) by t = (1 + z / (1 + |z|)) / 2 with
    z = (x - center) / scale, so no value falls outside the bins; the thresholds are t = j / bins.
    With the calibrated pixel threshold as center and (threshold - floor) as scale, the floor sits
    at t = 0.25 and the threshold at t = 0.5 (a bin edge for an even ``bins``); uncalibrated, the
    first batch's minimum and maximum land at 0.25 and 0.75.
    """

    def __init__(self, bins: int = 1000, threshold: float | None = None, floor: float | None = None) -> None:
        if bins < 2 or bins % 2:
            raise ValueError(f"bins must be even (the threshold is the edge bins / 2), got {bins}")
        self.bins = bins
        self.threshold = threshold if threshold is not None and math.isfinite(threshold) else None
        self.center: float | None = None
        self.scale: float | None = None
        if self.threshold is not None and floor is not None and math.isfinite(floor):
            self.center, self.scale = self.threshold, _positive(self.threshold - floor, self.threshold)
        self.counts: torch.Tensor | None = None  # (2, bins): normal, anomalous pixels per bin

    @torch.no_grad()
    def update(self, values: torch.Tensor, target: torch.Tensor) -> None:
        values, target = values.detach().float().flatten(), target.detach().flatten() > 0.5
        keep = torch.isfinite(values)
        values, target = values[keep], target[keep]
        if not len(values):
            return
        if self.center is None:
            low, high = float(values.min()), float(values.max())
            self.center, self.scale = (low + high) / 2, _positive((high - low) / 2, (low + high) / 2)
        z = (values - self.center) / self.scale
        index = ((0.5 + 0.5 * z / (1 + z.abs())) * self.bins).long().clamp_(0, self.bins - 1)
        counts = torch.bincount(index + self.bins * target.long(), minlength=2 * self.bins).view(2, self.bins)
        self.counts = counts if self.counts is None else self.counts + counts.to(self.counts.device)

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(precision, recall) at t = 0, 1/bins, ..., then the end point (1, 0), as :func:`pr_points`
        orders them (precision 1 where no pixel is flagged)."""
        counts = self.counts.cpu().double().numpy() if self.counts is not None else np.zeros((2, self.bins))
        fps, tps = (np.cumsum(c[::-1])[::-1] for c in counts)  # pixels with t >= j / bins
        flagged = tps + fps
        precision = np.divide(tps, flagged, out=np.ones_like(tps), where=flagged > 0)
        recall = tps / max(tps[0], 1)
        return np.r_[precision, 1.0], np.r_[recall, 0.0]

    def at_threshold(self) -> dict[str, float] | None:
        """Precision and recall at the calibrated pixel threshold (pixels >= it flagged), if any;
        precision NaN where no pixel is flagged."""
        if self.threshold is None or self.counts is None or self.center != self.threshold:
            return None
        precision, recall = self.curve()
        flagged = int(self.counts[:, self.bins // 2 :].sum())
        return {"precision": float(precision[self.bins // 2]) if flagged else math.nan,
                "tpr": float(recall[self.bins // 2])}  # fmt: skip

    @property
    def positives(self) -> int:
        return 0 if self.counts is None else int(self.counts[1].sum())


def _positive(span: float, around: float) -> float:
    return max(span, 1e-6 * max(abs(around), 1.0))  # a flat map: any positive scale keeps the order


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
    from adkd.report.panels import overlay

    device = post.image_threshold.device
    normalized_map, normalized = post.normalize(sample["anomaly_map"][None].to(device),
                                                torch.tensor([sample["pred_score"]], device=device))  # fmt: skip
    calibrated = bool(torch.isfinite(normalized).all())
    if calibrated:
        title += f" (normalised {float(normalized):.2f})"
    overlay(sample["image"].clamp(0, 1).permute(1, 2, 0).numpy(),
            normalized_map[0].cpu().numpy() if calibrated else None, title, path,
            alarm=calibrated and float(normalized) > 0.5, truth=sample["gt_mask"].numpy() > 0.5)  # fmt: skip


# -- drawing ------------------------------------------------------------------------------------


def _figure():  # noqa: ANN202
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def plot_histogram(edges: np.ndarray, counts: dict[str, np.ndarray], threshold: float | None, path: Path) -> None:
    figure, ax = _figure()
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


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, point: dict | None, threshold: float | None, path: Path) -> None:
    figure, ax = _figure()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.plot(fpr, tpr, color="C0", label=f"AUROC {area_under_roc(fpr, tpr):.3f}")
    if point is not None:
        ax.plot(point["fpr"], point["tpr"], "o", color="C3",
                label=f"threshold {threshold:.4g}: FPR {point['fpr']:.2f}, TPR {point['tpr']:.2f}")  # fmt: skip
    ax.set(xlabel="false-positive rate (normal images flagged)", ylabel="true-positive rate (anomalies found)",
           title="image ROC", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))  # fmt: skip
    ax.legend(fontsize=8, loc="lower right")
    figure.savefig(path)


def plot_pr(
    precision: np.ndarray, recall: np.ndarray, prevalence: float, point: dict | None, label: str, title: str, path: Path
) -> None:
    """A precision-recall curve (as :func:`pr_points` orders it), stepped as its AP counts it; the
    operating ``point`` marked unless its precision is NaN (nothing flagged)."""
    figure, ax = _figure()
    ax.axhline(prevalence, color="grey", linestyle=":", linewidth=1, label=f"chance {prevalence:.3f}")
    ax.plot(recall, precision, color="C0", drawstyle="steps-post",
            label=f"{label} {average_precision(precision, recall):.3f}")  # fmt: skip
    if point is not None and not math.isnan(point["precision"]):
        ax.plot(point["tpr"], point["precision"], "o", color="C3",
                label=f"threshold: precision {point['precision']:.2f}, recall {point['tpr']:.2f}")  # fmt: skip
    ax.set(xlabel="recall", ylabel="precision", title=title, xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    ax.legend(fontsize=8)
    figure.savefig(path)


def write_plots(
    folder: Path,
    predictions: list[dict],
    post: torch.nn.Module,
    worst: WorstCases,
    pixel_curve: BinnedPRCurve | None = None,
) -> list[Path]:
    """Every plot of the test into ``folder``; returns the files written. ``predictions``: one
    dict an image (``image_path``, ``gt_label``, ``pred_score``). A curve the split cannot define
    (ROC without both classes, PR without anomalies) is left out."""
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
        fpr, tpr, _ = roc_points(scores, labels)
        plot_roc(fpr, tpr, point, threshold, folder / "image_roc.png")
        written.append(folder / "image_roc.png")
    if anomalous:
        precision, recall, _ = pr_points(scores, labels)
        plot_pr(precision, recall, anomalous / len(labels), point, "AP", "image precision-recall",
                folder / "image_pr.png")  # fmt: skip
        written.append(folder / "image_pr.png")
    else:
        log.info("No anomalous test images: no ROC or precision-recall curve in %s", folder)
    if pixel_curve is not None and pixel_curve.positives:
        precision, recall = pixel_curve.curve()
        total = int(pixel_curve.counts.sum())
        plot_pr(precision, recall, pixel_curve.positives / total, pixel_curve.at_threshold(),
                f"AP ({pixel_curve.bins} thresholds)", "pixel precision-recall", folder / "pixel_pr.png")  # fmt: skip
        written.append(folder / "pixel_pr.png")
    for prefix, rank, samples in (("worst_fp", "normal, #{} highest score", worst.false_positives()),
                                  ("worst_fn", "anomalous, #{} lowest score", worst.false_negatives())):  # fmt: skip
        for i, sample in enumerate(samples):
            written.append(folder / f"{prefix}_{i:02d}.png")
            draw_sample(post, sample, _worst_title(rank.format(i + 1), sample, threshold), written[-1])
    return written


def _worst_title(rank: str, sample: dict, threshold: float | None) -> str:
    path, score = Path(sample["image_path"]), sample["pred_score"]
    where = "" if threshold is None else f", {'above' if score > threshold else 'below'} the threshold"
    return f"{rank}{where}: {path.parent.name}/{path.name}, score {score:.4g}"
