"""ADPS as a LightningModule: synthetic anomalies in, distillation + segmentation losses out."""

from __future__ import annotations

from collections.abc import Callable

import torch

from adkd.data.synthesis import AnomalySynthesizer
from adkd.methods.adps.loss import focal_segmentation_loss, masked_distillation_loss
from adkd.methods.adps.network import ADPSNetwork
from adkd.methods.base import AnomalyModule


class ADPS(AnomalyModule):
    """The switches are described in :mod:`adkd.methods.adps.network`; defaults are the paper's
    recipe where it gives one (conf/method/adps.yaml)."""

    def __init__(
        self,
        backbone: dict,
        image_size: int = 256,
        layers: list[int] = (1, 2, 3),
        k: int | None = None,
        patch_stages: list[int] | None = (0, 1),
        student_init: str = "random",
        wmb: str = "wmb",
        concat_kernel: int = 3,
        psm: bool = True,
        psm_widths: list[int] = (32, 64, 128),
        without: str | None = None,
        similarity: str = "cos",
        mse_margin: float = 1.0,
        detach: bool = False,
        binary_labels: bool = True,
        seg_weight: float = 1.0,
        focal_gamma: float = 2.0,
        focal_alpha: float | None = None,
        synthesis: dict | None = None,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        map_sigma: float = 0.0,
        score_sigma: float | None = 4.0,
        score: str = "max",
    ) -> None:
        super().__init__(optimizer, scheduler, map_sigma, score, score_sigma=score_sigma)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        k = k or max(1, image_size // 32)
        self.network = ADPSNetwork(
            backbone["name"], list(layers), backbone.get("pretrained", True), backbone.get("weights"), k,
            None if patch_stages is None else list(patch_stages), student_init, wmb, psm, list(psm_widths),
            concat_kernel, without, similarity, detach,
        )  # fmt: skip
        self.synthesizer = AnomalySynthesizer(**(synthesis or {}))
        self.similarity, self.mse_margin, self.binary_labels = similarity, mse_margin, binary_labels
        self.seg_weight, self.focal_gamma, self.focal_alpha = seg_weight, focal_gamma, focal_alpha

    def setup(self, stage: str) -> None:
        """Training and validation images get their synthetic anomalies in the data loader's
        workers (per sample, on the CPU), so the accelerator's step never waits on the synthesis."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if stage == "fit" and hasattr(datamodule, "set_synthesizer"):
            datamodule.set_synthesizer(self.synthesizer)

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        if batch.get("synthetic") is not None:
            images, mask = batch["image"], batch["gt_mask"]
        else:  # loaders that are not an adkd datamodule's: synthesise here, on the batch's device
            images, mask = self.synthesizer(batch["image"])
        out = self.network(images)
        losses, total = {}, 0
        if out["teacher"] is not None and out["student"] is not None:
            losses["distill"] = masked_distillation_loss(
                out["teacher"], out["student"], mask, self.similarity, self.mse_margin, self.binary_labels
            )
            total = losses["distill"]
        if out["logits"] is not None:
            losses["seg"] = focal_segmentation_loss(out["logits"], mask, self.focal_gamma, self.focal_alpha)
            total = total + self.seg_weight * losses["seg"]
        losses["loss"] = total
        return losses
