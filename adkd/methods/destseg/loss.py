"""DeSTSeg's losses: the denoising student's cosine distance, the segmentation's focal + L1."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def denoising_loss(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """Per scale, 1 - cos between the teacher's (clean image) and the student's (image with an
    anomaly) L2-normalised features, averaged over positions; summed over scales and over the
    batch, as the official code does (its learning rate of 0.4 goes with that sum)."""
    return sum((1 - (t * s).sum(1)).mean(dim=(1, 2)).sum() for t, s in zip(teacher, student, strict=True))


def segmentation_loss(logits: torch.Tensor, mask: torch.Tensor, gamma: float = 4.0) -> dict[str, torch.Tensor]:
    """Focal loss (binary cross-entropy x (1 - p_t)^gamma, no class weight) plus the L1 distance
    of the probability to the mask, both averaged; the mask is brought to the logits' size
    bilinearly and thresholded at 0.5 (official)."""
    target = (F.interpolate(mask.float(), size=logits.shape[-2:], mode="bilinear", align_corners=False) >= 0.5).float()
    logits = logits.float()
    p = logits.sigmoid()
    p_t = p * target + (1 - p) * (1 - target)
    focal = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * (1 - p_t).pow(gamma)).mean()
    return {"focal": focal, "l1": (p - target).abs().mean()}
