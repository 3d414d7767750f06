"""RD4AD as a LightningModule."""

from __future__ import annotations

from collections.abc import Callable

import torch

from adkd.methods.base import AnomalyModule
from adkd.methods.rd4ad.loss import reverse_distillation_loss
from adkd.methods.rd4ad.network import RD4ADNetwork


class RD4AD(AnomalyModule):
    """Reverse distillation. Defaults are the paper's recipe (see conf/method/rd4ad.yaml).

    ``backbone`` is the backbone config group: ``{name, pretrained, weights}``.
    """

    def __init__(
        self,
        backbone: dict,
        layers: list[int] = (1, 2, 3),
        block: str = "auto",
        bottleneck_blocks: int | None = None,
        decoder_blocks: list[int] | None = None,
        loss_mode: str = "flat",
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        map_sigma: float = 4.0,
        score: str = "max",
    ) -> None:
        super().__init__(optimizer, scheduler, map_sigma, score)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        self.loss_mode = loss_mode
        self.network = RD4ADNetwork(
            backbone["name"], list(layers), backbone.get("pretrained", True), backbone.get("weights"),
            block, bottleneck_blocks, decoder_blocks,
        )  # fmt: skip

    def loss(self, batch: dict) -> torch.Tensor:
        teacher, student = self.network(batch["image"])
        return reverse_distillation_loss(teacher, student, self.loss_mode)
