"""Shared training plumbing and inference for every method.

A method is three files: its network, a thin LightningModule and its yaml (conf/method/<name>.yaml,
which registers it: :mod:`adkd.methods.registry`). The network is a plain ``nn.Module``, named in
the yaml by ``method.network._target_`` and built by Hydra, with

- ``network(images)`` -> whatever the method's ``loss`` needs (training forward), and
- ``network.anomaly_map(images)`` -> the raw anomaly map (B, 1, H, W) at the input size.

The module subclasses :class:`AnomalyModule` and adds only what is the method's own: ``loss(batch)``
and, where it has them, its training phases and optimiser groups. Everything else is here:
post-processing (the ``post`` config group, :class:`~adkd.methods.components.postprocess.PostProcessor`),
optimiser wiring, checkpoint contents, inference. Metrics, figures and metrics.json are the
evaluation callback's (:class:`adkd.training.evaluation.Evaluation`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import lightning as L
import torch
from torch import nn

from adkd.methods.components.postprocess import PostProcessor
from adkd.methods.components.teacher_cache import TeacherCache

CATEGORY_THRESHOLDS = "adkd_category_thresholds"  # a unified model's per-category thresholds, in its checkpoint


class AnomalyModule(L.LightningModule):
    """Loss/optimizer wiring, and inference through the shared post-processing."""

    def __init__(
        self,
        network: nn.Module,
        post: dict | None = None,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        teacher_cache: dict | None = None,
        channels_last: bool = False,
    ) -> None:
        """``network``: the method's ``nn.Module``; ``post``: the post-processing settings (conf/post/:
        map_sigma, score_sigma, score, topk); ``optimizer``/``scheduler``: partial factories;
        ``teacher_cache``: :class:`~adkd.methods.components.teacher_cache.TeacherCache` settings
        (conf/run.yaml's ``teacher_cache``; None: on, with its defaults); ``channels_last``: train in
        channels-last memory format (weights and images; ``+method.channels_last=true``: ``make
        bench-train`` measured STFPM's student forward faster so, RD4AD's transposed convolutions
        slower; off by default, as it changes a seeded run's rounding)."""
        super().__init__()
        self.teacher_cache = TeacherCache(**(teacher_cache or {}))
        self.channels_last = channels_last
        self.network = network
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.post = PostProcessor(**(post or {}))
        self.run_config: dict | None = None  # the resolved run config, stored in every checkpoint (for predict)

    # -- what methods provide ------------------------------------------------------------------
    def loss(self, batch: dict) -> torch.Tensor | dict[str, torch.Tensor]:
        raise NotImplementedError

    @property
    def ranks(self) -> int:
        """The processes training together (DDP's world size; 1 alone). DDP averages the ranks'
        gradients: a loss summed over the batch (STFPM's, DeSTSeg's student's, as their official
        code sums it) is multiplied by this, so that two ranks of 8 images step as one process
        with the same 16 does. A loss averaged over the batch needs nothing."""
        return self.trainer.world_size if self._trainer is not None else 1

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
        with self.teacher_cache.serving(self.network, self._formatted(batch)):
            return self._log_losses(self.loss(batch), "train", len(batch["image"]))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        with self.teacher_cache.serving(self.network, self._formatted(batch)):
            self._log_losses(self.loss(batch), "val", len(batch["image"]))

    def _formatted(self, batch: dict) -> dict:
        """``batch`` with its images in channels-last where the module trains so (in place)."""
        if self.channels_last and isinstance(batch, dict):
            for key in ("image", "clean"):
                if isinstance(batch.get(key), torch.Tensor) and batch[key].dim() == 4:
                    batch[key] = batch[key].contiguous(memory_format=torch.channels_last)
        return batch

    def on_fit_start(self) -> None:
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def on_train_start(self) -> None:
        """The teacher cache's size check: as many images as the training and validation sets hold."""
        val = getattr(self.trainer.datamodule, "val_set", None)
        self.teacher_cache.expected = _length(self.trainer.train_dataloader) + (len(val) if val is not None else 0)

    def on_fit_end(self) -> None:
        self.teacher_cache.clear()  # the memory back: testing and predicting do not use it

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
        factory, epochs = self.scheduler_factory, {}
        if "max_epochs" in inspect.signature(factory).parameters:  # a schedule keyed on the run's length
            epochs = {"max_epochs": self.trainer.max_epochs}  # as trained: budget=demo's steps make them at fit time
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": factory(optimizer=optimizer, **epochs)}}

    def fit_example(self, images: torch.Tensor) -> None:
        """Make an untrained model runnable from example images, for speed measurements and layout
        checks (PatchCore: a memory bank). Methods whose untrained weights already run need nothing."""

    # -- evaluation ----------------------------------------------------------------------------
    def prepare_for_inference(self) -> AnomalyModule:
        """Eval mode with channels-last weights: the same maps (to 1e-6), faster on the CPU (``make
        bench`` measures it). For inference only: DHKD's training step gets slower in channels-last
        (its FFT and flow ops copy)."""
        self.eval()
        return self.to(memory_format=torch.channels_last)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.run_config is not None:
            checkpoint["adkd_config"] = self.run_config
        if self.post.category_thresholds:  # a unified model's (plain floats: loads with weights_only)
            checkpoint[CATEGORY_THRESHOLDS] = {c: dict(t) for c, t in self.post.category_thresholds.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.post.category_thresholds = {c: dict(t) for c, t in (checkpoint.get(CATEGORY_THRESHOLDS) or {}).items()}

    def on_test_start(self) -> None:
        self.prepare_for_inference()

    @torch.no_grad()
    def predict_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Smoothed anomaly maps (B,1,H,W) and image scores (B,), float32, for [0, 1] images."""
        return self.post(self.network.anomaly_map(images))

    def test_step(self, batch: dict, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The maps and scores; what is made of them (metrics, figures, metrics.json) is the
        evaluation callback's business (adkd.training.callbacks.Evaluation, configured in conf/run.yaml)."""
        return self.predict_maps(batch["image"])


class ExportForm:
    """A submodule with a second form of the same computation that exports and runs better as an
    exported graph; :func:`adkd.deploy.engines.for_export` switches every such submodule to it."""

    def use_export_form(self) -> None:
        raise NotImplementedError


def _length(loader) -> int:  # noqa: ANN001
    """Images in a loader's dataset (0 where unknown: before the loaders are made, or a list of them)."""
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return 0


def multistep_at_fractions(optimizer, max_epochs: int, fractions: list[float], gamma: float):  # noqa: ANN001, ANN201
    """MultiStepLR with milestones at fractions of the run (ADPS: x0.2 at 80% and 90%); ``max_epochs``
    is the trainer's (:meth:`AnomalyModule.configure_optimizers`)."""
    milestones = sorted({max(1, int(round(f * max_epochs))) for f in fractions})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=gamma)
