"""The threshold that turns anomaly maps into defect masks for the segmentation F1
(``pixel_seg_f1``, :meth:`adkd.metrics.AnomalyMetrics.segmentation_f1`), set from the normal
validation images only: the test split's labels never choose it.

MVTec AD 2 (Heckler-Kram et al., "The MVTec AD 2 Dataset: Advanced Scenarios for Unsupervised
Anomaly Detection", arXiv 2503.21622, 2025) ranks methods by AU-PRO up to FPR 0.05 and by SegF1,
the pixel F1 of binarised maps, with a threshold the method must choose without anomalous images:
its validation split holds good images only. Rules (``segmentation.rule``):

- ``mean_std``: the mean of the normal validation pixels' scores plus ``k`` standard deviations
  (``segmentation.k``, default 3). The RoBiS entry of the VAND 3.0 challenge on MVTec AD 2 (Li et
  al., arXiv 2505.21152) names mean + 3 std the usual statistical binarisation; taking the mean
  and deviation over the validation split's good images is our reading of the benchmark's rule
  that the threshold comes from the validation split. The MVTec AD 2 paper's own text on its
  baselines' threshold could not be read when this was written: the rule and ``k`` are settings
  to check against it, not a quotation of it.
- ``fpr``: the calibrated pixel threshold, above which a share ``threshold.fpr`` of the normal
  validation pixels lies (:meth:`adkd.methods.components.postprocess.PostProcessor.calibrate`).
"""

from __future__ import annotations

import torch

SEGMENTATION_RULES = ("mean_std", "fpr")


def segmentation_threshold(normal_maps: torch.Tensor, rule: str, k: float, fpr_threshold: float) -> float:
    """The threshold of ``rule`` from the maps of normal validation images (any shape; every pixel
    counts once); ``fpr_threshold``: the calibrated pixel threshold, which ``rule="fpr"`` returns."""
    if rule not in SEGMENTATION_RULES:
        raise ValueError(f"segmentation.rule must be one of {SEGMENTATION_RULES} or null, got {rule!r}")
    if rule == "fpr":
        return float(fpr_threshold)
    pixels = normal_maps.detach().flatten().double()  # millions of pixels: sums in float64
    return float(pixels.mean() + k * pixels.std(correction=0))
