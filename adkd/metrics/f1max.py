"""F1-max: the best F1 over all thresholds."""

from __future__ import annotations

import torch
from torchmetrics.classification import BinaryPrecisionRecallCurve


class F1Max(BinaryPrecisionRecallCurve):
    """Maximum F1 score over every threshold of the precision-recall curve (exact, unbinned)."""

    def compute(self) -> torch.Tensor:
        precision, recall, _ = super().compute()
        f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
        return f1.max()
