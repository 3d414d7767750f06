"""Shared training plumbing and evaluation for every method.

A method subclasses :class:`AnomalyModule` and provides ``self.network`` with

- ``network(images)`` -> whatever ``loss`` needs (training forward), and
- ``network.anomaly_map(images)`` -> raw anomaly map (B, 1, H, W) at the input size,

plus ``loss(batch) -> Tensor``. Smoothing the map, the image score, the metrics, figures and
inference timing live here, once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import lightning as L
import torch

from adkd.methods.postprocess import PostProcessor
from adkd.metrics import AnomalyMetrics


class AnomalyModule(L.LightningModule):
    """Loss/optimizer wiring plus the shared evaluation (metrics, figures, timing)."""

    def __init__(
        self,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        map_sigma: float = 4.0,
        score: str = "max",
        num_figures: int = 8,
        topk: float = 0.01,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.post = PostProcessor(map_sigma, score, topk)
        self.num_figures = num_figures
        self.pixel_metrics = True  # from the datamodule at test time (False: image labels only)
        self.test_metrics: dict[str, float] = {}
        self.run_config: dict | None = None  # the resolved run config, stored in every checkpoint (for predict)
        self.figures: list[dict] = []

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

    def on_test_epoch_start(self) -> None:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is not None:
            self.pixel_metrics = datamodule.has_masks
        self.metrics = AnomalyMetrics(pixel=self.pixel_metrics)
        self.figures, self._infer_time, self._infer_count = [], 0.0, 0
        self.test_predictions: list[dict] = []

    def test_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        if images.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        anomaly_map, pred_score = self.predict_maps(images)
        if images.is_cuda:
            torch.cuda.synchronize()
        self._infer_time += time.perf_counter() - start
        self._infer_count += images.shape[0]
        self.metrics.update(pred_score, batch["gt_label"], anomaly_map, batch["gt_mask"])
        rows = zip(batch["image_path"], batch["gt_label"].tolist(), pred_score.tolist(), strict=True)
        self.test_predictions += [{"image_path": p, "gt_label": int(y), "pred_score": float(s)} for p, y, s in rows]
        self._keep_figures(batch, anomaly_map, pred_score)

    def _keep_figures(self, batch: dict, anomaly_map: torch.Tensor, pred_score: torch.Tensor) -> None:
        """Keep up to ``num_figures`` samples, half anomalous and half normal where possible."""
        for i, label in enumerate(batch["gt_label"].tolist()):
            same = sum(f["gt_label"] == label for f in self.figures)
            if same >= (self.num_figures + 1) // 2 or len(self.figures) >= self.num_figures:
                continue
            self.figures.append(
                {
                    "image": batch["image"][i].cpu(),
                    "anomaly_map": anomaly_map[i, 0].cpu(),
                    "gt_mask": batch["gt_mask"][i, 0].cpu(),
                    "gt_label": label,
                    "pred_score": float(pred_score[i]),
                    "image_path": batch["image_path"][i],
                }
            )

    def on_test_epoch_end(self) -> None:
        results = self.metrics.compute()
        if self.post.calibrated:
            results.update(self.metrics.at_threshold(float(self.post.image_threshold)))
        results["inference_ms_per_image"] = 1000 * self._infer_time / max(self._infer_count, 1)
        self.test_metrics = results
        for name, value in results.items():
            if value is not None:
                self.log(f"test/{name}", value)


def multistep_at_fractions(optimizer, max_epochs: int, fractions: list[float], gamma: float):  # noqa: ANN001, ANN201
    """MultiStepLR with milestones at fractions of the run (ADPS: x0.2 at 80% and 90%)."""
    milestones = sorted({max(1, int(round(f * max_epochs))) for f in fractions})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=gamma)
