"""RD4AD's cosine distillation loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reverse_distillation_loss(
    teacher: list[torch.Tensor], student: list[torch.Tensor], mode: str = "flat"
) -> torch.Tensor:
    """Sum over scales of the batch mean of 1 - cos.

    ``flat`` (the official code): one cosine per sample between the whole C*H*W vectors.
    ``pixel`` (the paper's text): a cosine over channels at every position, averaged.
    """
    loss = 0
    for t, s in zip(teacher, student, strict=True):
        if mode == "flat":
            loss = loss + (1 - F.cosine_similarity(t.flatten(1), s.flatten(1), dim=1)).mean()
        elif mode == "pixel":
            loss = loss + (1 - F.cosine_similarity(t, s, dim=1)).mean()
        else:
            raise ValueError(f"loss mode must be 'flat' or 'pixel', got {mode!r}")
    return loss
