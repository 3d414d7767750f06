"""Callbacks every run uses (configured in conf/run.yaml)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch


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


def _numpy_state() -> tuple:
    """numpy's generator state with its key array as a tensor (checkpoints load with weights_only=True,
    which refuses numpy arrays)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return name, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(gauss)
