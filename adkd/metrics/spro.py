"""AU-sPRO: the area under the saturated per-region-overlap curve of MVTec LOCO AD (Bergmann et al.,
"Beyond Dents and Scratches: Logical Constraints in Unsupervised Anomaly Detection and
Localization", IJCV 2022), up to a false-positive-rate limit, divided by the limit.

A region is one ground-truth mask file of an image (its defect region; regions may overlap). At
a threshold t a pixel is predicted anomalous when its score is above t; region k's overlap is
``min(1, TP_k / s_k)``, TP_k its pixels predicted anomalous and s_k its saturation area, from the
category's ``defects_config.json`` entry for the region's defect type: the threshold itself
(``relative_saturation`` false: a pixel count, never more than the region's area) or that share
of the region's area, cut to an integer (``relative_saturation`` true). sPRO(t) is the mean overlap
over every region of the scored images; FPR(t) is the share of predicted-anomalous pixels among
the pixels outside every region, of every scored image (normal images, and the rest of the
anomalous ones), as the dataset's evaluation counts them.

The curve is exact: a point at every distinct score (the official evaluation samples thresholds
and refines them until neighbouring points are close; this is the curve it converges to),
starting at (0, 0). The area up to the limit uses the trapezoid rule, the curve at the limit
interpolated between its neighbours, and is divided by the limit, as AU-PRO is.

Maps are scored at the size the model sees (``dataset.image_size``), as every pixel metric here:
regions are resized with the masks' rule, and an absolute saturation area (a pixel count at the
released size) is scaled by the ratio of the two areas (:func:`region_saturation`). A region that
no pixel is left of at that size is left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

MAX_REGIONS = 63  # regions an image may have: one bit each of an int64 label map
SPRO_LIMITS = {"pixel_spro": 0.05, "pixel_spro_03": 0.3}  # LOCO's reported limit, and AU-PRO's


def region_saturation(area: int, rule, scale: float = 1.0) -> float:  # noqa: ANN001 - a Saturation
    """The saturation area of a region of ``area`` pixels under ``rule`` (an
    :class:`adkd.data.records.Saturation`), for maps whose pixel count is ``scale`` times the
    released image's. 0 for an empty region (it is left out)."""
    if area <= 0:
        return 0.0
    if rule.relative:
        return float(max(1, int(rule.threshold * area)))  # the evaluation's integer cut, never 0 pixels
    return float(min(rule.threshold * scale, area))


def trapezoid_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """The area under the piecewise-linear curve (x increasing, repeats allowed) from x[0] to
    ``limit``, the curve at ``limit`` interpolated between its neighbours."""
    inside = x <= limit
    area = float(np.sum((x[inside][1:] - x[inside][:-1]) * (y[inside][1:] + y[inside][:-1]) / 2))
    after = int(np.argmax(~inside)) if not inside.all() else None
    if after is not None and after > 0 and x[after - 1] < limit:
        x0, y0, x1, y1 = x[after - 1], y[after - 1], x[after], y[after]
        at_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += float((limit - x0) * (y0 + at_limit) / 2)
    return area


class SPRO:
    """Collects the scores of region and region-free pixels, batch by batch; :meth:`areas` gives
    the normalised AU-sPRO at each FPR limit. Not a torchmetrics object: it keeps one process's
    test maps (the test runs in one process)."""

    def __init__(self) -> None:
        self.negatives: list[torch.Tensor] = []
        self.regions: list[tuple[torch.Tensor, float]] = []  # (the region's scores, its saturation area)

    @torch.no_grad()
    def update(self, preds: torch.Tensor, regions: torch.Tensor, saturation: torch.Tensor) -> None:
        """``preds`` (B,[1,]H,W) maps; ``regions`` (B,[1,]H,W) int64, bit k set on region k's pixels;
        ``saturation`` (B, MAX_REGIONS) each region's saturation area (0: no such region)."""
        preds = preds.detach().float().cpu().reshape(len(preds), -1)
        regions = regions.detach().cpu().reshape(len(regions), -1)
        saturation = saturation.detach().double().cpu()
        for scores, bits, areas in zip(preds, regions, saturation, strict=True):
            self.negatives.append(scores[bits == 0])
            for k in torch.nonzero(areas > 0).flatten().tolist():
                inside = ((bits >> k) & 1).bool()
                if inside.any():
                    self.regions.append((scores[inside], float(areas[k])))

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(FPR, sPRO) at every distinct score, from (0, 0) to (1, 1), FPR increasing."""
        negatives = torch.cat(self.negatives).double().numpy() if self.negatives else np.zeros(0)
        if not self.regions or not len(negatives):
            raise ValueError("sPRO needs defect regions and pixels outside them")
        scores, fpr_steps, spro_steps = (
            [negatives],
            [np.full(len(negatives), 1 / len(negatives))],
            [np.zeros(len(negatives))],
        )
        for region, saturation in self.regions:
            ordered = np.sort(region.double().numpy())[::-1]
            found = np.minimum(np.arange(len(ordered) + 1) / saturation, 1.0)  # the overlap after j pixels
            scores.append(ordered)
            fpr_steps.append(np.zeros(len(ordered)))
            spro_steps.append(np.diff(found) / len(self.regions))
        scores = np.concatenate(scores)
        order = np.argsort(-scores, kind="stable")
        scores = scores[order]
        fpr = np.cumsum(np.concatenate(fpr_steps)[order])
        spro = np.cumsum(np.concatenate(spro_steps)[order])
        last_of_each = np.r_[scores[1:] != scores[:-1], True]  # a threshold takes every pixel of a tied score
        return np.r_[0.0, fpr[last_of_each]], np.r_[0.0, spro[last_of_each]]

    def areas(self, fpr_limits: Iterable[float]) -> list[float]:
        """The area under the curve up to each limit, divided by the limit."""
        fpr, spro = self.curve()
        fpr = np.minimum(fpr, 1.0)  # float sums of 1/N may pass 1 by an ulp
        out = []
        for limit in fpr_limits:
            value = trapezoid_to(fpr, spro, limit) / limit
            out.append(value if math.isfinite(value) else None)
        return out
