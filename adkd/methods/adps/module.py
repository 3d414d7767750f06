"""ADPS as a LightningModule: synthetic anomalies in, distillation + segmentation losses out."""

from __future__ import annotations

import torch

from adkd.data.synthesis import AnomalySynthesizer, anomalous_batch
from adkd.methods.adps.loss import masked_distillation_loss
from adkd.methods.adps.network import ADPSNetwork
from adkd.methods.base import AnomalyModule
from adkd.methods.components.losses import focal_segmentation_loss


class ADPS(AnomalyModule):
    """The network's switches are described in :mod:`adkd.methods.adps.network`; defaults are the
    paper's recipe where it gives one (conf/method/adps.yaml).

    ADPS trains on synthetic anomalies. Its yaml declares them (``synthesis``), and the datamodule
    adds them to the training and validation images in its loader's workers, so the accelerator's
    step never waits on them; a batch from any other loader gets them here, on its device.
    """

    def __init__(
        self,
        network: ADPSNetwork,
        synthesis: dict | None = None,
        mse_margin: float = 1.0,
        binary_labels: bool = True,
        seg_weight: float = 1.0,
        focal_gamma: float = 2.0,
        focal_alpha: float | None = None,
        **shared,  # noqa: ANN003
    ) -> None:
        super().__init__(network, **shared)
        self.synthesizer = AnomalySynthesizer(**(synthesis or {}))
        self.mse_margin, self.binary_labels = mse_margin, binary_labels
        self.seg_weight, self.focal_gamma, self.focal_alpha = seg_weight, focal_gamma, focal_alpha

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        images, mask, _ = anomalous_batch(batch, self.synthesizer)
        out = self.network(images)
        losses, total = {}, 0
        if out["teacher"] is not None and out["student"] is not None:
            losses["distill"] = masked_distillation_loss(
                out["teacher"], out["student"], mask, self.network.similarity, self.mse_margin, self.binary_labels
            )
            total = losses["distill"]
        if out["logits"] is not None:
            losses["seg"] = focal_segmentation_loss(out["logits"], mask, self.focal_gamma, self.focal_alpha)
            total = total + self.seg_weight * losses["seg"]
        losses["loss"] = total
        return losses
