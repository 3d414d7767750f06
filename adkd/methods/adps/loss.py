"""ADPS losses: mask-aware distillation and focal segmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_distillation_loss(
    teacher: list[torch.Tensor],
    student: list[torch.Tensor],
    mask: torch.Tensor,
    mode: str = "cos",
    margin: float = 1.0,
    binary: bool = True,
) -> torch.Tensor:
    """Eq. 7, summed over scales: mean[(1 - Y) d + Y (push-apart term)], with Y the synthetic-anomaly
    mask at the scale: binary (the paper's "ground truth"; a position is anomalous when at least half
    of it is) or area-averaged (``binary=False``: a position half covered counts half).

    ``cos`` (the paper's): d = 1 - cos(T, S), push-apart term cos(T, S).
    ``mse`` (ours; the paper gives no formula): d = mean over channels of (T - S)^2, push-apart
    term max(0, margin - d).
    """
    loss = 0
    for t, s in zip(teacher, student, strict=True):
        y = F.interpolate(mask.float(), size=t.shape[-2:], mode="area")
        if binary:
            y = (y >= 0.5).float()
        if mode == "cos":
            c = F.cosine_similarity(t, s, dim=1).unsqueeze(1)
            loss = loss + ((1 - y) * (1 - c) + y * c).mean()
        elif mode == "mse":
            d = (t - s).pow(2).mean(1, keepdim=True)
            loss = loss + ((1 - y) * d + y * F.relu(margin - d)).mean()
        else:
            raise ValueError(f"similarity must be 'cos' or 'mse', got {mode!r}")
    return loss
