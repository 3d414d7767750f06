"""The metrics every run reports, computed once in the shared evaluation."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision, BinaryPrecisionRecallCurve
from torchmetrics.utilities.data import dim_zero_cat

from adkd.metrics.aupro import AUPRO
from adkd.metrics.f1max import F1Max
from adkd.metrics.spro import SPRO, SPRO_LIMITS

# AU-PRO's FPR limits: MVTec AD's 0.3 and MVTec AD 2's 0.05, both from one stored set of maps.
AUPRO_LIMITS = {"pixel_aupro": 0.3, "pixel_aupro_005": 0.05}

log = logging.getLogger(__name__)


class AnomalyMetrics(nn.Module):
    """Image-level metrics from ``pred_score``/``gt_label``; pixel-level from ``anomaly_map``/``gt_mask``.

    ``pixel=False`` for datasets without masks: only the image metrics are computed. Where the
    batches carry defect regions (``gt_regions`` and ``gt_saturation``: MVTec LOCO), AU-sPRO is
    computed too (``pixel_spro`` to FPR 0.05, ``pixel_spro_03`` to 0.3); other datasets have no such keys.

    A metric the test split cannot define is None (null in metrics.json, "n/a" in tables), with
    a warning: AUROC needs both classes, AP, F1-max and AUPRO need anomalies (torchmetrics returns
    0 for these, which would read as a failed detector and drag a table's mean down).
    """

    def __init__(self, pixel: bool = True) -> None:
        super().__init__()
        self.pixel = pixel
        # Scores as they are (normalization=None): torchmetrics' default passes a batch through a
        # sigmoid when any of its values lies outside [0, 1], batch by batch, so a test split whose
        # batches fall on both sides is ranked on two scales (and float32's sigmoid ties every value
        # above about 17 at 1.0). Measured and pinned in tests/test_metrics.py.
        exact = {"normalization": None}
        self.image = nn.ModuleDict(
            {
                "image_auroc": BinaryAUROC(**exact),
                "image_ap": BinaryAveragePrecision(**exact),
                "image_f1max": F1Max(**exact),
            }
        )
        self.pixel_metrics = nn.ModuleDict(
            {
                "pixel_auroc": BinaryAUROC(**exact),
                "pixel_ap": BinaryAveragePrecision(**exact),
                "pixel_aupro": AUPRO(),  # both limits of AUPRO_LIMITS (AUPRO.areas)
                "pixel_f1max": F1Max(**exact),
            }
            if pixel
            else {}
        )
        # The test always runs in one process (run.py tests on rank 0 after DDP training), so a
        # metric must never wait for other ranks to sync.
        for metric in [*self.image.values(), *self.pixel_metrics.values()]:
            metric.sync_on_compute = metric._to_sync = False  # _to_sync: the flag compute() reads
        self.spro: SPRO | None = None  # made by the first batch with defect regions
        self.counts = {"image": [0, 0], "pixel": [0, 0]}  # [normal, anomalous]
        self.scores: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, pred_score, gt_label, anomaly_map=None, gt_mask=None, gt_regions=None, gt_saturation=None) -> None:  # noqa: ANN001, E501
        pred_score, gt_label = pred_score.detach().float().cpu(), gt_label.detach().int().cpu()
        for metric in self.image.values():
            metric.update(pred_score, gt_label)
        self.scores.append(pred_score)
        self.labels.append(gt_label)
        positives = int(gt_label.sum())
        self.counts["image"][0] += len(gt_label) - positives
        self.counts["image"][1] += positives
        if self.pixel:
            anomaly_map = anomaly_map.detach().float().cpu()
            gt_mask = gt_mask.detach().int().cpu()
            self.pixel_metrics["pixel_aupro"].update(anomaly_map, gt_mask)
            flat_map, flat_mask = anomaly_map.flatten(), gt_mask.flatten()
            positives = int(flat_mask.sum())
            self.counts["pixel"][0] += len(flat_mask) - positives
            self.counts["pixel"][1] += positives
            for name in ("pixel_auroc", "pixel_ap", "pixel_f1max"):
                self.pixel_metrics[name].update(flat_map, flat_mask)
            if gt_regions is not None:
                self.spro = self.spro or SPRO()
                self.spro.update(anomaly_map, gt_regions, gt_saturation)

    def compute(self) -> dict[str, float | None]:
        out = {}
        for level, metrics in (("image", self.image), ("pixel", self.pixel_metrics)):
            normal, anomalous = self.counts[level]
            for name, metric in metrics.items():
                names = list(AUPRO_LIMITS) if name == "pixel_aupro" else [name]
                undefined = anomalous == 0 or (name.endswith("auroc") and normal == 0)
                if undefined:
                    missing = "anomalous" if anomalous == 0 else "normal"
                    log.warning("%s is undefined: the test split has no %s %ss", " and ".join(names), missing, level)
                    values = [None] * len(names)
                elif name == "pixel_aupro":
                    values = metric.areas(AUPRO_LIMITS.values())
                else:
                    values = [float(metric.compute())]
                out.update(zip(names, values, strict=True))
        if self.spro is not None:
            if self.spro.regions and self.counts["pixel"][0]:
                out.update(zip(SPRO_LIMITS, self.spro.areas(SPRO_LIMITS.values()), strict=True))
            else:
                log.warning("%s undefined: the test split has no defect regions", " and ".join(SPRO_LIMITS))
                out.update(dict.fromkeys(SPRO_LIMITS))
        return out

    def segmentation_f1(self, threshold: float) -> float | None:
        """Pixel F1 of the maps binarised at ``threshold`` (a pixel above it is anomalous), over the
        pixels of every image together: MVTec AD 2's SegF1 (Heckler-Kram et al., 2025) when the
        threshold comes from the normal validation images (:class:`adkd.training.callbacks.Calibrate`,
        ``segmentation.rule``). None where the test split has no anomalous pixel."""
        if not self.pixel or self.counts["pixel"][1] == 0:
            return None
        state = self.pixel_metrics["pixel_f1max"]  # every pixel's score and label, as they are
        predicted = dim_zero_cat(state.preds) > threshold
        labels = dim_zero_cat(state.target).bool()
        tp, fp = int((predicted & labels).sum()), int((predicted & ~labels).sum())
        fn = int((~predicted & labels).sum())
        return 2 * tp / (2 * tp + fp + fn)

    def at_threshold(self, threshold: float) -> dict[str, float | None]:
        """Image F1, precision, recall and false-positive rate when score > ``threshold`` means
        anomalous (None where undefined: no predicted anomalies for precision, and so on)."""
        scores, labels = torch.cat(self.scores), torch.cat(self.labels).bool()
        predicted = scores > threshold
        tp, fp = int((predicted & labels).sum()), int((predicted & ~labels).sum())
        fn, tn = int((~predicted & labels).sum()), int((~predicted & ~labels).sum())

        def ratio(a: int, b: int) -> float | None:
            return a / b if b else None

        return {
            "image_f1": ratio(2 * tp, 2 * tp + fp + fn),
            "image_precision": ratio(tp, tp + fp),
            "image_recall": ratio(tp, tp + fn),
            "image_fpr": ratio(fp, fp + tn),
        }

    def pixel_pr_curve(self, max_points: int | None = 2000) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The exact pixel precision-recall curve behind ``pixel_ap`` and ``pixel_f1max``, from the
        F1-max metric's own state (every pixel's score and label, as they are), so its
        non-interpolated AP (the sum over recall steps of precision) is ``pixel_ap``. None where
        ``pixel_ap`` is undefined.

        (precision, recall, thresholds) in torchmetrics' order: thresholds increasing, recall falling
        from 1 to the end point (1, 0); the first point flags every pixel, so its precision is the
        share of anomalous pixels. ``max_points``: thinned for drawing to about that many points,
        half evenly spaced along the curve and half evenly in recall, both ends kept (None: every point).
        """
        if not self.pixel or self.counts["pixel"][1] == 0:
            return None
        curve = BinaryPrecisionRecallCurve.compute(self.pixel_metrics["pixel_f1max"])  # F1Max's parent's curve
        precision, recall, thresholds = (t.numpy() for t in curve)
        last = len(recall) - 1
        if max_points is None or last < max_points:
            return precision, recall, thresholds
        half = max(max_points // 2, 2)
        by_recall = last - np.searchsorted(recall[::-1], np.linspace(0, 1, half))  # recall falls along the curve
        keep = np.unique(np.r_[np.linspace(0, last, half).round().astype(int), by_recall.clip(0, last)])
        return precision[keep], recall[keep], thresholds[keep[:-1]]
