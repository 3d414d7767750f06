"""An independent AU-PRO for the tests, written after the MVTec AD evaluation code's algorithm
(``compute_pro`` and ``trapezoid`` of the MVTec AD evaluation scripts, Bergmann et al., IJCV 2021):

- the regions are the connected components of each ground-truth mask, 8-connected (a 3 x 3
  structuring element of ones);
- the curve is exact: every distinct score is a threshold (score >= threshold is anomalous); the
  FPR is over the normal pixels of all images together, the PRO the mean over all regions of all
  images of the share of the region above the threshold;
- counts are accumulated over the pixels sorted by score (false positives as integers, then
  divided in float32, as there; overlaps in float64), and of a run of equal scores only the last
  point is kept; the curve runs from (0, 0) to (1, 1);
- the area is the trapezoid rule up to the FPR limit, the PRO at the limit interpolated linearly
  between its two neighbours, and divided by the limit.
"""

from __future__ import annotations

from bisect import bisect_right

import numpy as np
from scipy.ndimage import label


def pro_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) of ``maps`` (N, H, W) against binary ``masks`` (N, H, W), FPR increasing."""
    false_positive = np.zeros(masks.shape, dtype=np.uint32)
    overlap = np.zeros(masks.shape, dtype=np.float64)
    normal_pixels = regions = 0
    for i, mask in enumerate(masks):
        labelled, count = label(mask, structure=np.ones((3, 3), dtype=int))
        false_positive[i] = labelled == 0
        normal_pixels += int((labelled == 0).sum())
        for k in range(1, count + 1):
            region = labelled == k
            overlap[i][region] = 1.0 / region.sum()
        regions += count
    order = np.argsort(maps, axis=None)[::-1]
    scores = maps.ravel()[order]
    fpr = np.cumsum(false_positive.ravel()[order]).astype(np.float32) / np.float32(normal_pixels)
    pro = np.cumsum(overlap.ravel()[order]) / regions
    last_of_tie = np.append(np.diff(scores) != 0, True)
    fpr, pro = np.minimum(fpr[last_of_tie], 1.0), np.minimum(pro[last_of_tie], 1.0)
    return np.concatenate(([0.0], fpr, [1.0])), np.concatenate(([0.0], pro, [1.0]))


def area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under y(x) for x in [0, limit]; y at the limit interpolated when the limit is
    not one of the x."""
    extra = 0.0
    if limit not in x:
        right = bisect_right(x, limit)
        y_limit = y[right - 1] + (y[right] - y[right - 1]) * (limit - x[right - 1]) / (x[right] - x[right - 1])
        extra = 0.5 * (y_limit + y[right - 1]) * (limit - x[right - 1])
    keep = x <= limit
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + extra)


def reference_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """AU-PRO up to ``fpr_limit``, normalised by it (1 for a perfect map)."""
    fpr, pro = pro_curve(maps, masks)
    return area_up_to(fpr, pro, fpr_limit) / fpr_limit
