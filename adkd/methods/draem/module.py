"""DRAEM as a LightningModule: synthetic anomalies in, reconstruction + segmentation losses out."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adkd.data.synthesis import AnomalySynthesizer, anomalous_batch
from adkd.methods.adps.loss import focal_segmentation_loss
from adkd.methods.base import AnomalyModule
from adkd.methods.draem.loss import ssim_loss
from adkd.methods.draem.network import DRAEMNetwork


class DRAEM(AnomalyModule):
    """DRAEM (conf/method/draem.yaml). Paper and official code: the reconstructive network learns
    to give back the clean image from one with a synthetic anomaly (L2 + SSIM), the discriminative
    one to segment the anomaly from [image, reconstruction] (focal loss, gamma 2); the three
    losses are summed with weight 1, one Adam over both networks, lr x0.2 at 80% and 90% of the
    epochs; the map is the anomaly class's softmax, the image score the max of its 21x21 local
    means (``post.score_box``). Anomalies: Perlin masks filled with texture images, on half the
    training images (the official code's 0.5); ours: the texture source bundled with the project
    where no DTD folder is given (``synthesis.source``), and none of the official code's colour
    augmentations of the texture."""

    def __init__(
        self,
        network: DRAEMNetwork,
        synthesis: dict | None = None,
        ssim_weight: float = 1.0,
        focal_gamma: float = 2.0,
        **shared,  # noqa: ANN003
    ) -> None:
        super().__init__(network, **shared)
        self.synthesizer = AnomalySynthesizer(**(synthesis or {}))
        self.ssim_weight, self.focal_gamma = ssim_weight, focal_gamma

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        images, mask, clean = anomalous_batch(batch, self.synthesizer)
        reconstruction, logits = self.network(images)
        losses = {
            "l2": F.mse_loss(reconstruction.float(), clean.float()),
            "ssim": ssim_loss(reconstruction.float(), clean.float()),
            "seg": focal_segmentation_loss(logits, mask, self.focal_gamma),
        }
        losses["loss"] = losses["l2"] + self.ssim_weight * losses["ssim"] + losses["seg"]
        return losses
