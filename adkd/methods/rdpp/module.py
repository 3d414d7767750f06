"""RD++ as a LightningModule: RD4AD's distillation loss plus the projection losses on noisy images."""

from __future__ import annotations

import torch

from adkd.methods.base import AnomalyModule
from adkd.methods.rd4ad.loss import reverse_distillation_loss
from adkd.methods.rdpp.loss import projection_loss, simplex_like_noise
from adkd.methods.rdpp.network import RDPPNetwork


class RDPP(AnomalyModule):
    """RD++ (conf/method/rdpp.yaml). Official code: loss = RD4AD's flat cosine loss + 0.2 x the
    projection loss (:func:`~adkd.methods.rdpp.loss.projection_loss`); every training image gets a
    noise patch; Adam with betas (0.5, 0.999), lr 5e-3 for the bottleneck and decoder and 1e-3 for
    the projection (``projection_lr_ratio`` 0.2 of ``lr``). Ours: one optimiser step per batch
    (the official code accumulates two batches of 16), value noise for simplex noise, and no
    Sinkhorn term (zero in the official code, see the loss)."""

    def __init__(
        self,
        network: RDPPNetwork,
        projection_weight: float = 0.2,
        projection_lr_ratio: float = 0.2,
        reconstruction_weight: float = 0.01,
        contrast_weight: float = 0.1,
        contrast_margin: float = 0.5,
        noise_scale: float = 0.2,
        **shared,  # noqa: ANN003
    ) -> None:
        super().__init__(network, **shared)
        self.projection_weight, self.projection_lr_ratio = projection_weight, projection_lr_ratio
        self.weights = {
            "reconstruction_weight": reconstruction_weight,
            "contrast_weight": contrast_weight,
            "contrast_margin": contrast_margin,
        }
        self.noise_scale = noise_scale

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        images = batch["image"]
        out = self.network(images, simplex_like_noise(images, scale=self.noise_scale))
        losses = projection_loss(out["teacher_noisy"], out["projected"], out["projected_noisy"], **self.weights)
        losses["distill"] = reverse_distillation_loss(out["teacher"], out["student"], "flat")
        losses["loss"] = losses["distill"] + self.projection_weight * losses["projection"]
        return losses

    def trainable_parameters(self):
        projection = list(self.network.projection.parameters())
        ids = {id(p) for p in projection}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        lr = self.optimizer_factory.keywords["lr"]
        return [{"params": rest}, {"params": projection, "lr": lr * self.projection_lr_ratio}]
