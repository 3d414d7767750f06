"""Losses more than one method trains with."""

from __future__ import annotations

import torch
from kornia.losses import focal_loss


def focal_segmentation_loss(logits: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0, alpha: float | None = None):
    """Focal loss of 2-class logits (B,2,H,W) against a binary mask (B,1,H,W): the mean over pixels
    of -alpha_t (1 - p_t)^gamma log p_t, as DRAEM's official code computes it (and ADPS's Eq. 8 reads).

    kornia's terms are used, but not its ``reduction="mean"``: that divides by classes x pixels,
    half the per-pixel mean, which would halve the segmentation loss against the methods' other
    terms (their weights are set for the per-pixel mean)."""
    per_class = focal_loss(logits.float(), mask[:, 0].long(), alpha=alpha, gamma=gamma, reduction="none")
    return per_class.sum(1).mean()  # only the true class's term is non-zero at each pixel
