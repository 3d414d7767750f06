"""RD4AD as a LightningModule: the cosine distillation loss on its network's features."""

from __future__ import annotations

import torch

from adkd.methods.base import AnomalyModule
from adkd.methods.rd4ad.loss import reverse_distillation_loss
from adkd.methods.rd4ad.network import RD4ADNetwork


class RD4AD(AnomalyModule):
    """Reverse distillation (conf/method/rd4ad.yaml). ``loss_mode``: ``flat`` (the official code) or
    ``pixel`` (the paper's per-position cosine)."""

    def __init__(self, network: RD4ADNetwork, loss_mode: str = "flat", **shared) -> None:  # noqa: ANN003
        super().__init__(network, **shared)
        self.loss_mode = loss_mode

    def loss(self, batch: dict) -> torch.Tensor:
        teacher, student = self.network(batch["image"])
        return reverse_distillation_loss(teacher, student, self.loss_mode)
