"""AU-PRO up to a false-positive-rate limit, normalised to [0, 1].

The area under the per-region-overlap curve of the MVTec AD evaluation (Bergmann et al., IJCV
2021): the regions are the 8-connected components of every ground-truth mask; at each threshold
the PRO is the mean over all regions of the test set of the share of the region above it, and the
FPR is over the normal pixels of all test images together; the curve is exact (a threshold at
every distinct score), integrated with the trapezoid rule up to the limit (the PRO at the limit
interpolated between its neighbours) and divided by the limit, so a perfect map scores exactly 1.
Not the per-image average that the RD4AD code and older anomalib computed.

anomalib 2.7's implementation computes exactly this and is used as it is; ``tests/test_metrics.py``
pins it to an independent reference written after the MVTec evaluation code's ``compute_pro`` and
``trapezoid`` (``tests/pro_reference.py``) at the limits 0.3 and 0.05, on random and structured maps
(ties, several regions in one image, images without defects, 80 maps of 256 x 256 px): they agree
to 1e-7.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from anomalib.metrics.aupro import _AUPRO
from torchmetrics.utilities.compute import auc
from torchmetrics.utilities.data import dim_zero_cat


class AUPRO(_AUPRO):
    """Area under the per-region-overlap curve for FPR in [0, ``fpr_limit``], divided by the limit."""

    def update(self, preds, target) -> None:  # noqa: ANN001
        super().update(
            preds.float().flatten(0, -3) if preds.dim() > 3 else preds.float(),
            target.int().flatten(0, -3) if target.dim() > 3 else target.int(),
        )

    @torch.no_grad()
    def areas(self, fpr_limits: Iterable[float]) -> list[float]:
        """The normalised area at each FPR limit, from one labelling of the regions (the costly
        part): MVTec AD's 0.3 and MVTec AD 2's 0.05 from the same stored maps."""
        cca = self.perform_cca()
        preds = dim_zero_cat(self.preds)
        preds = preds.squeeze(1) if preds.dim() > 3 else preds
        kept = float(self.fpr_limit)
        out = []
        try:
            for limit in fpr_limits:
                self.fpr_limit.fill_(limit)  # compute_pro cuts the curve at the buffer's value
                fpr, pro = self.compute_pro(cca=cca, preds=preds)
                out.append(float(auc(fpr, pro, reorder=True) / fpr[-1]))
        finally:
            self.fpr_limit.fill_(kept)
        return out
