"""The metrics every run reports, computed once in the shared evaluation."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision

from adkd.metrics.aupro import AUPRO
from adkd.metrics.f1max import F1Max

IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1max")
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_aupro", "pixel_f1max")


class AnomalyMetrics(nn.Module):
    """Image-level metrics from ``pred_score``/``gt_label``; pixel-level from ``anomaly_map``/``gt_mask``.

    ``pixel=False`` for datasets without masks: only the image metrics are computed.
    """

    def __init__(self, pixel: bool = True, fpr_limit: float = 0.3) -> None:
        super().__init__()
        self.pixel = pixel
        self.image = nn.ModuleDict(
            {"image_auroc": BinaryAUROC(), "image_ap": BinaryAveragePrecision(), "image_f1max": F1Max()}
        )
        self.pixel_metrics = nn.ModuleDict(
            {
                "pixel_auroc": BinaryAUROC(),
                "pixel_ap": BinaryAveragePrecision(),
                "pixel_aupro": AUPRO(fpr_limit=fpr_limit),
                "pixel_f1max": F1Max(),
            }
            if pixel
            else {}
        )
        # The test always runs in one process (run.py tests on rank 0 after DDP training), so a
        # metric must never wait for other ranks to sync.
        for metric in [*self.image.values(), *self.pixel_metrics.values()]:
            metric.sync_on_compute = metric._to_sync = False  # _to_sync: the flag compute() reads

    @torch.no_grad()
    def update(self, pred_score, gt_label, anomaly_map=None, gt_mask=None) -> None:  # noqa: ANN001
        pred_score, gt_label = pred_score.detach().float().cpu(), gt_label.detach().int().cpu()
        for metric in self.image.values():
            metric.update(pred_score, gt_label)
        if self.pixel:
            anomaly_map = anomaly_map.detach().float().cpu()
            gt_mask = gt_mask.detach().int().cpu()
            self.pixel_metrics["pixel_aupro"].update(anomaly_map, gt_mask)
            flat_map, flat_mask = anomaly_map.flatten(), gt_mask.flatten()
            for name in ("pixel_auroc", "pixel_ap", "pixel_f1max"):
                self.pixel_metrics[name].update(flat_map, flat_mask)

    def compute(self) -> dict[str, float]:
        out = {name: float(m.compute()) for name, m in self.image.items()}
        out.update({name: float(m.compute()) for name, m in self.pixel_metrics.items()})
        return out

    def reset(self) -> None:
        for m in [*self.image.values(), *self.pixel_metrics.values()]:
            m.reset()
