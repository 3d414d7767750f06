"""Shared training plumbing and inference for every method.

A method subclasses :class:`AnomalyModule` and provides ``self.network`` with

- ``network(images)`` -> whatever ``loss`` needs (training forward), and
- ``network.anomaly_map(images)`` -> raw anomaly map (B, 1, H, W) at the input size,

plus ``loss(batch) -> Tensor``. Smoothing the map, the image score and the thresholds live in
:class:`~adkd.methods.postprocess.PostProcessor`; metrics, figures and metrics.json in the
evaluation callback (:class:`adkd.callbacks.Evaluation`).
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch

from adkd.methods.postprocess import PostProcessor


class AnomalyModule(L.LightningModule):
    """Loss/optimizer wiring, and inference through the shared post-processing."""

    def __init__(
        self,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        map_sigma: float = 4.0,
        score: str = "max",
        topk: float = 0.01,
        score_sigma: float | None = None,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.post = PostProcessor(map_sigma, score, topk, score_sigma)
        self.run_config: dict | None = None  # the resolved run config, stored in every checkpoint (for predict)

    # -- what methods provide ------------------------------------------------------------------
    def loss(self, batch: dict) -> torch.Tensor | dict[str, torch.Tensor]:
        raise NotImplementedError

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    # -- training ------------------------------------------------------------------------------
    def _log_losses(self, losses, stage: str, batch_size: int) -> torch.Tensor:
        if not isinstance(losses, dict):
            losses = {"loss": losses}
        for name, value in losses.items():
            self.log(
                f"{stage}/{name}", value, prog_bar=name == "loss", on_epoch=True, on_step=False, batch_size=batch_size
            )
        return losses["loss"]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._log_losses(self.loss(batch), "train", len(batch["image"]))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._log_losses(self.loss(batch), "val", len(batch["image"]))

    def early_stopping_phase(self) -> str | None:
        """The training phase early stopping (``budget=converged``) watches; None while the
        current phase must run to its end. One phase by default."""
        return "train"

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ValueError("No optimizer configured: set method.optimizer in the config.")
        optimizer = self.optimizer_factory(params=self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer)}}

    # -- evaluation ----------------------------------------------------------------------------
    def prepare_for_inference(self) -> AnomalyModule:
        """Eval mode with channels-last weights: the same maps (to 1e-6), faster on the CPU (make
        bench, mobilenet_v2, 256 px: RD4AD 39 -> 28 ms/image, ADPS 72 -> 56, DHKD 48 -> 41). For
        inference only: DHKD's training step gets slower in channels-last (its FFT and flow ops copy)."""
        self.eval()
        return self.to(memory_format=torch.channels_last)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.run_config is not None:
            checkpoint["adkd_config"] = self.run_config

    def on_test_start(self) -> None:
        self.prepare_for_inference()

    @torch.no_grad()
    def predict_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Smoothed anomaly maps (B,1,H,W) and image scores (B,), float32, for [0, 1] images."""
        return self.post(self.network.anomaly_map(images))

    def test_step(self, batch: dict, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The maps and scores; what is made of them (metrics, figures, metrics.json) is the
        evaluation callback's business (adkd.callbacks.Evaluation, configured in conf/run.yaml)."""
        return self.predict_maps(batch["image"])


def multistep_at_fractions(optimizer, max_epochs: int, fractions: list[float], gamma: float):  # noqa: ANN001, ANN201
    """MultiStepLR with milestones at fractions of the run (ADPS: x0.2 at 80% and 90%)."""
    milestones = sorted({max(1, int(round(f * max_epochs))) for f in fractions})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=gamma)
