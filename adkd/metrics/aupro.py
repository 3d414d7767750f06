"""AUPRO up to a false-positive-rate limit, normalised to [0, 1].

anomalib 2.7's implementation is used as it is: it builds one PRO curve over the whole test
set (every region of every image, one global FPR), as Bergmann et al. define it, not the
per-image average that the RD4AD code and older anomalib computed; it interpolates the curve
at the FPR limit and divides by that limit, so a perfect map scores exactly 1. The tests pin it
to hand-computed cases.
"""

from __future__ import annotations

from anomalib.metrics.aupro import _AUPRO


class AUPRO(_AUPRO):
    """Area under the per-region-overlap curve for FPR in [0, ``fpr_limit``], divided by the limit."""

    def update(self, preds, target) -> None:  # noqa: ANN001
        super().update(preds.float().flatten(0, -3) if preds.dim() > 3 else preds.float(),
                       target.int().flatten(0, -3) if target.dim() > 3 else target.int())  # fmt: skip
