"""STFPM as a LightningModule."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from adkd.methods.base import AnomalyModule
from adkd.methods.stfpm.network import STFPMNetwork


def feature_pyramid_loss(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """Per scale 0.5/(H*W) * sum of squared differences of channel-normalised features, summed
    over the batch as the official code does (so the effective step grows with the batch size)."""
    loss = 0
    for t, s in zip(teacher, student, strict=True):
        h, w = t.shape[-2:]
        loss = loss + 0.5 / (h * w) * (F.normalize(t, dim=1) - F.normalize(s, dim=1)).pow(2).sum()
    return loss


class STFPM(AnomalyModule):
    """Defaults are the paper's recipe (see conf/method/stfpm.yaml)."""

    def __init__(
        self,
        backbone: dict,
        layers: list[int] = (1, 2, 3),
        combine: str = "mul",
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        map_sigma: float = 4.0,
        score: str = "max",
    ) -> None:
        super().__init__(optimizer, scheduler, map_sigma, score)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        self.network = STFPMNetwork(
            backbone["name"], list(layers), backbone.get("pretrained", True), backbone.get("weights"), combine
        )

    def loss(self, batch: dict) -> torch.Tensor:
        teacher, student = self.network(batch["image"])
        return feature_pyramid_loss(teacher, student)
