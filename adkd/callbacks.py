"""Callbacks every run uses (configured in conf/run.yaml)."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch

log = logging.getLogger(__name__)


class LastCheckpoint(L.Callback):
    """Keeps ``<dirpath>/last.ckpt``, rewritten at the end of every epoch (after validation) and,
    if ``every_n_train_steps`` is set, every N optimizer steps too (for long epochs).

    Written atomically (a temporary file renamed over the old one), so a run killed while saving
    still has its previous checkpoint. Lightning's ModelCheckpoint with ``save_top_k: 0`` writes
    ``last.ckpt`` only when training ends, which leaves an interrupted run with nothing.

    The random number generators' states travel in the checkpoint, so a run resumed from an
    epoch's end draws what the uninterrupted run drew (noise, synthetic anomalies, data order).
    """

    def __init__(self, dirpath: str, every_n_train_steps: int | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps

    @property
    def path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def _save(self, trainer: L.Trainer) -> None:
        tmp = self.dirpath / ".last.ckpt.tmp"
        trainer.save_checkpoint(tmp)  # every rank calls it; only rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.path)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._save(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:  # noqa: ANN001
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0 and not trainer.fit_loop.epoch_loop.done:
            self._save(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:  # noqa: ANN001
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_state(),
            "python": random.getstate(),  # a tuple of ints: loads with weights_only=True
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:  # noqa: ANN001
        states = checkpoint.get("rng_states")
        if not states:
            return
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])
        name, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((name, keys.numpy(), pos, has_gauss, gauss))
        random.setstate(states["python"])


class Calibrate(L.Callback):
    """After training, sets the model's image and pixel thresholds from the normal validation
    images (without synthetic anomalies) so that a share ``fpr`` of them lies above, then rewrites
    ``last.ckpt`` so that the thresholds travel with it. ``image``/``pixel`` fix one by hand."""

    def __init__(self, fpr: float = 0.01, image: float | None = None, pixel: float | None = None) -> None:
        self.fpr, self.image, self.pixel = fpr, image, pixel

    @torch.no_grad()
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "calibration_dataloader"):
            return
        loader = datamodule.calibration_dataloader()
        pl_module.eval()
        scores, maps = [], []
        with trainer.precision_plugin.forward_context():
            for batch in loader:
                anomaly_map, pred_score = pl_module.predict_maps(batch["image"].to(pl_module.device))
                scores.append(pred_score.float().cpu())
                maps.append(anomaly_map.float().cpu())
        if scores:
            pl_module.post.calibrate(torch.cat(scores), torch.cat(maps), self.fpr)
            source = f"{len(loader.dataset)} normal validation images"
        else:
            source = "no validation images (dataset.val_fraction is 0): set threshold.image/pixel by hand"
        pl_module.post.set_thresholds(self.image, self.pixel)
        post = pl_module.post
        log.info("Thresholds from %s at FPR %g: image %.6g, pixel %.6g", source, self.fpr,
                 float(post.image_threshold), float(post.pixel_threshold))  # fmt: skip
        for callback in trainer.callbacks:
            if isinstance(callback, LastCheckpoint):
                callback._save(trainer)


def _numpy_state() -> tuple:
    """numpy's generator state with its key array as a tensor (checkpoints load with weights_only=True,
    which refuses numpy arrays)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return name, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(gauss)
