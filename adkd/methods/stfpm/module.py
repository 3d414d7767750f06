"""STFPM as a LightningModule: the feature pyramid matching loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adkd.methods.base import AnomalyModule


def feature_pyramid_loss(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """Per scale 0.5/(H*W) * sum of squared differences of channel-normalised features (the paper's
    per-image loss), summed over the batch, so the effective step grows with the batch size. The
    official script averages over the batch (without the 0.5) instead: see README.md beside this file."""
    loss = 0
    for t, s in zip(teacher, student, strict=True):
        h, w = t.shape[-2:]
        loss = loss + 0.5 / (h * w) * (F.normalize(t, dim=1) - F.normalize(s, dim=1)).pow(2).sum()
    return loss


class STFPM(AnomalyModule):
    """Defaults are the paper's recipe (conf/method/stfpm.yaml)."""

    def loss(self, batch: dict) -> torch.Tensor:
        teacher, student = self.network(batch["image"])
        return feature_pyramid_loss(teacher, student) * self.ranks  # summed over the batch
