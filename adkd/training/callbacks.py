"""Callbacks every run uses (configured in conf/run.yaml)."""

from __future__ import annotations

import logging
import os
import random
import signal
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping

from adkd.data.synthesis import AnomalySynthesizer
from adkd.errors import ConfigError, TrainingDivergedError
from adkd.metrics.collection import AnomalyMetrics
from adkd.metrics.segmentation import segmentation_threshold

log = logging.getLogger(__name__)


class LastCheckpoint(Checkpoint):
    """Keeps ``<dirpath>/last.ckpt``, rewritten at the end of every epoch (after validation) and,
    if ``every_n_train_steps`` is set, every N optimizer steps too (for long epochs), and once more
    when training ends, after every other callback's ``on_fit_end`` (Lightning runs checkpoint
    callbacks last): the thresholds that :class:`Calibrate` sets then travel in it.

    Written atomically (a temporary file renamed over the old one), so a run killed while saving
    still has its previous checkpoint. Lightning's ModelCheckpoint with ``save_top_k: 0`` writes
    ``last.ckpt`` only when training ends, which leaves an interrupted run with nothing.

    The random number generators' states travel in the checkpoint, so a run resumed from an
    epoch's end draws what the uninterrupted run drew (noise, synthetic anomalies, data order).

    In a job that submitit started (``hydra/launcher=slurm|local``), the scheduler's warning signal
    before preemption or the time limit (USR2) writes the checkpoint at the end of the current
    training step first, then hands over to submitit, which requeues the job and exits; the new
    start continues from that checkpoint in the same folder (``adkd.run``). ``requeued`` tells.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps
        self.requeued = False
        self._submitit = None  # (signal number, submitit's handler) while fit runs in a submitit job
        self._pending = None  # (signal number, frame) of a warning not yet acted on

    @property
    def path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def _save(self, trainer: L.Trainer) -> None:
        tmp = self.dirpath / ".last.ckpt.tmp"
        try:
            trainer.save_checkpoint(tmp, weights_only=False)  # every rank calls it; only rank 0 writes
        except BaseException:  # a full disk, a kill while saving: the previous last.ckpt stays, no half file
            if trainer.is_global_zero:
                tmp.unlink(missing_ok=True)
            raise
        if trainer.is_global_zero:
            os.replace(tmp, self.path)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._save(trainer)
            self._requeue_if_warned(trainer, saved=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:  # noqa: ANN001
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0 and not trainer.fit_loop.epoch_loop.done:
            self._save(trainer)
        self._requeue_if_warned(trainer)

    # Scheduler warnings (submitit) ------------------------------------------------------------

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not os.environ.get("SUBMITIT_EXECUTOR"):
            return
        signum = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))
        handler = signal.getsignal(signum)
        if callable(handler):  # submitit's checkpoint-and-requeue
            self._submitit = (signum, handler)
            signal.signal(signum, self._warned)

    def _warned(self, signum: int, frame) -> None:  # noqa: ANN001
        log.warning(
            "%s: preemption or time limit ahead; checkpointing at this step's end, then requeueing",
            signal.Signals(signum).name,
        )
        self._pending = (signum, frame)

    def _requeue_if_warned(self, trainer: L.Trainer, saved: bool = False) -> None:
        if self._submitit is None:
            return
        warned = self._pending is not None
        if trainer.world_size > 1:  # ranks hear the signal at different steps: all act at the same one
            warned = trainer.strategy.reduce_boolean_decision(warned, all=False)
        if not warned:
            return
        if not saved:
            self._save(trainer)
        signum = self._submitit[0]
        self._pending = self._pending or (signum, None)
        self._hand_over()  # submitit requeues from rank 0 and exits; other ranks go on until the job ends

    def _hand_over(self) -> None:
        """Give the signal back to submitit and let it act on a pending warning (requeue, exit)."""
        if self._submitit is None:
            return
        signum, handler = self._submitit
        signal.signal(signum, handler)
        self._submitit = None
        if self._pending is not None:
            self.requeued = True
            handler(*self._pending)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.interrupted:
            self._save(trainer)
        self._hand_over()  # a warning during the last validation: last.ckpt is the end of training

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._submitit is not None:
            signal.signal(*self._submitit)
            self._submitit = None

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


class TrainingLength(L.Callback):
    """How long a run trains, counted in optimiser steps, and whether it stopped too early.

    A recipe counted in epochs gives a folder of 50 images a third of the steps it gives 160: the
    demo budget (``budget=demo``) therefore names ``steps``, and here, once the training set is
    known (after the datamodule's setup, before the optimiser and any epoch-keyed schedule are
    made), they become the whole epochs that hold at least that many steps on this training set
    (under DDP, on each rank's share). ``max_epochs``, where it is set (the paper and converged
    budgets, the command line), decides instead; the steps it implies are printed alike.

    Whether a run stopped while still learning: at the end, the training loss of its last phase (a
    method's ``early_stopping_phase``: DHKD's student, DeSTSeg's segmentation) and its synthetic
    validation (:func:`synthetic_validation`, the images and anomalies of :class:`SyntheticValidation`),
    scored at ``share_before`` of the planned steps and again at the end. Undertrained: over its
    last quarter, the loss still fell by more than ``falling`` of where the phase began per step
    (:func:`still_learning`), or ``metric`` moved by more than ``moving`` either way since the
    earlier score (not settled). Neither alone tells: a starved STFPM's validation sits flat at
    chance while its loss falls steeply; a starved RD4AD's loss creeps down as slowly as a trained
    one's while its validation jumps. Such a run warns, naming the knob to raise, and metrics.json's ``training`` says
    ``undertrained: true`` with the evidence (:class:`adkd.training.evaluation.Evaluation`). A run that early
    stopping ended (``budget=converged``) is not judged: its validation loss settled.
    """

    def __init__(
        self,
        steps: int | None = None,
        max_epochs: int | None = None,
        metric: str = "pixel_auroc",
        falling: float = 0.005,
        moving: float = 0.01,
        share_before: float = 0.75,
    ) -> None:
        if steps is None and max_epochs is None:
            raise ConfigError(
                "Neither steps nor max_epochs is set (budget=demo takes steps from the method's "
                "recipe.small.steps): give one, e.g. steps=300 or max_epochs=10."
            )
        self.steps, self.max_epochs = steps, max_epochs
        self.metric, self.falling, self.moving, self.share_before = metric, falling, moving, share_before
        self.batches: int | None = None
        self.planned = 0  # optimiser steps this run will take (at fit start)
        self.losses: list[torch.Tensor] = []  # this run's training loss per step of the current phase
        self.phase: str | None = None
        self.earlier: dict[str, float] | None = None  # the synthetic validation at checkpoint_step
        self.summary: dict | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.datamodule is None:
            return
        self.batches = max(1, len(trainer.datamodule.train_dataloader()))
        images = len(getattr(trainer.datamodule, "train_set", None) or [])
        if self.max_epochs is None:
            trainer.fit_loop.max_epochs = -(-self.steps // self.batches)
        epochs = trainer.fit_loop.max_epochs
        source = f"{self.steps} steps" if self.max_epochs is None else f"max_epochs={epochs}"
        capped = f", or {self.steps} where the method stops at `steps`" if self.max_epochs and self.steps else ""
        log.info(
            "Training: %s = %d epoch%s of %d batch%s (%d training images): %d optimiser steps%s",
            source,
            epochs,
            "s"[: epochs != 1],
            self.batches,
            "es"[: 2 * (self.batches != 1)],
            images,
            epochs * self.batches,
            capped,
        )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        planned = trainer.max_epochs * (self.batches or 0)
        self.planned = min(planned, self.steps) if self.steps else planned  # EfficientAD stops at `steps`

    @property
    def checkpoint_step(self) -> int | None:
        """The step at which the model is scored, to compare with the end: ``share_before`` of the
        planned steps, inside a method's last phase (DHKD's student from 1/2, DeSTSeg's segmentation
        from 1/5). None for runs too short to tell (PatchCore's single pass)."""
        return round(self.share_before * self.planned) if self.planned >= 8 else None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:  # noqa: ANN001
        phase = pl_module.early_stopping_phase() if hasattr(pl_module, "early_stopping_phase") else "train"
        if phase != self.phase:  # a new phase: its loss means something else
            self.phase, self.losses = phase, []
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if phase is not None and isinstance(loss, torch.Tensor):
            self.losses.append(loss.detach().float())  # kept on the device: no step waits for it
        if trainer.global_step == self.checkpoint_step and self.losses:
            self.earlier = synthetic_validation(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After every callback's on_train_end: the end's synthetic validation (SyntheticValidation's)
        # is in the trainer's callback metrics.
        summary = {
            "steps": trainer.global_step,
            "epochs": trainer.current_epoch,
            "batches_per_epoch": self.batches,
            "steps_asked": self.steps if self.max_epochs is None else None,
            "undertrained": None,
        }
        settled = any(isinstance(c, EarlyStopping) and c.stopped_epoch for c in trainer.callbacks)
        loss = still_learning(torch.stack(self.losses).cpu() if self.losses else None)
        key = f"val/{self.metric}"
        end, before = trainer.callback_metrics.get(key), (self.earlier or {}).get(key)
        moved = None if end is None or before is None else float(end) - before
        self.losses = []
        if settled or (loss is None and moved is None):
            self.summary = summary
            return
        reasons = []
        if loss is not None and loss["per_step"] > self.falling:
            reasons.append(
                f"its loss still fell by {loss['per_step']:.2%} of where it began a step over its last "
                f"{loss['steps']} steps (over {self.falling:.2%})"
            )
        if moved is not None and abs(moved) > self.moving:
            reasons.append(
                f"its validation {self.metric} (synthetic anomalies) moved from {before:.3f} at step "
                f"{self.checkpoint_step} to {float(end):.3f} (by over {self.moving:g})"
            )
        summary["undertrained"] = bool(reasons)
        summary["evidence"] = {
            "loss": loss,
            "validation": None
            if moved is None
            else {
                "metric": key,
                "step_before": self.checkpoint_step,
                "before": round(before, 4),
                "end": round(float(end), 4),
                "moved": round(moved, 4),
            },
        }
        if reasons:
            twice = 2 * trainer.current_epoch
            knob = f"steps={2 * self.steps}" if self.max_epochs is None else f"max_epochs={twice}"
            log.warning(
                "The model may be undertrained: %s. Train longer: %s, or budget=converged.", "; ".join(reasons), knob
            )
        self.summary = summary

    def state_dict(self) -> dict:  # a resumed run keeps its earlier score and its phase's losses
        losses = torch.stack(self.losses).tolist() if self.losses else []
        return {"phase": self.phase, "losses": losses, "earlier": self.earlier}

    def load_state_dict(self, state_dict: dict) -> None:
        self.phase, self.earlier = state_dict.get("phase"), state_dict.get("earlier")
        self.losses = [torch.tensor(v) for v in state_dict.get("losses", [])]


def still_learning(losses: torch.Tensor | None) -> dict | None:
    """How a phase's training loss ended: the means of its first steps (up to 5), of the quarter
    before the last and of the last quarter; the share of the starting loss the last quarter took
    off, and that share a step (``per_step``): a share of where it began, not of where it is,
    since a student near its floor keeps taking a steady share of what is left; and a step, since
    a short phase (DHKD's student) takes off in a quarter of 26 steps what a long one does in 50.
    None where under 8 steps tell nothing."""
    quarter = 0 if losses is None else len(losses) // 4
    if quarter < 2:
        return None
    start = float(losses[: min(5, quarter)].mean())
    before, last = float(losses[-2 * quarter : -quarter].mean()), float(losses[-quarter:].mean())
    share = (before - last) / abs(start) if start else 0.0
    return {
        "start": round(start, 6),
        "quarter_before_last": round(before, 6),
        "last_quarter": round(last, 6),
        "share_of_start": round(share, 4),
        "per_step": round(share / quarter, 6),
        "steps": quarter,
    }


class StopOnDivergence(L.Callback):
    """Ends the run with a clear error at the end of the first epoch whose mean training loss is
    NaN or infinite, before that epoch's checkpoint is written (checkpoint callbacks run last):
    last.ckpt keeps the previous epoch's finite weights, and no metrics are computed from NaN maps.
    Checked once an epoch, on the logged mean, so that no training step waits for the GPU.
    (Lightning's own checks do not fit: EarlyStopping's ``check_finite`` needs early stopping and
    stops quietly; ``detect_anomaly`` slows every step.)"""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        if loss is None or bool(torch.isfinite(loss)):
            return

        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        raise TrainingDivergedError(
            f"training diverged: the mean training loss of epoch {trainer.current_epoch} is {float(loss)}. "
            f"Lower the learning rate (now lr={lr}) or raise batch_size; last.ckpt, if any, holds the "
            "previous epoch's weights."
        )


class ConvergedStop(EarlyStopping):
    """Lightning's early stopping on the validation loss (``budget=converged``), made aware of
    methods that train in phases: the count starts afresh when the phase changes (the monitored
    loss changes meaning: DHKD's flow NLL, then its student's losses), and a phase the method says
    must run its course (``early_stopping_phase()`` returns None: DHKD's flow) never stops."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.phase: str | None = None

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        module = trainer.lightning_module
        phase = module.early_stopping_phase() if hasattr(module, "early_stopping_phase") else "train"
        if phase is None:
            return
        if phase != self.phase:
            self.phase, self.wait_count = phase, 0
            self.best_score = torch.tensor(torch.inf if self.mode == "min" else -torch.inf)
        super()._run_early_stopping_check(trainer)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "phase": self.phase}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.phase = state_dict.get("phase")


class Calibrate(L.Callback):
    """After training, sets the model's image and pixel thresholds from the normal validation
    images (without synthetic anomalies) so that a share ``fpr`` of them lies above; they are
    buffers of the model, so the checkpoint written after it (:class:`LastCheckpoint`) holds them.
    ``image``/``pixel`` fix one by hand.

    Where the validation split also holds labelled anomalous images (ELPV's real defects, a folder
    dataset's ``val/``), the same pass scores it: ``val/labelled_<metric>`` in
    ``trainer.callback_metrics`` (metrics.json's ``validation``) and the loggers, the objective that
    does not favour methods trained on synthetic anomalies; and the F1-optimal image threshold on
    it is logged, which ``mode: f1`` uses.

    Where the dataset asks for a segmentation F1 (``segmentation_rule``, see
    :mod:`adkd.metrics.segmentation`), the same normal validation maps set its threshold, handed on
    as ``val/segmentation_threshold``.

    A unified run (``category=all``) gets thresholds per category, each from that category's own
    validation images (its F1-optimal one from its own labelled ones), kept in the post-processor's
    ``category_thresholds``, and its segmentation thresholds as ``val/<category>/segmentation_threshold``;
    the labelled validation metrics are the union's.

    Runs when training ends (``on_train_end``), so that the evaluation finds these metrics at
    ``on_fit_end`` and the last checkpoint, written after every callback, holds the thresholds."""

    def __init__(
        self,
        fpr: float = 0.01,
        image: float | None = None,
        pixel: float | None = None,
        mode: str = "fpr",
        segmentation_rule: str | None = None,
        segmentation_k: float = 3.0,
    ) -> None:
        if mode not in ("fpr", "f1"):
            raise ValueError(f"threshold.mode must be 'fpr' or 'f1', got {mode!r}")
        self.fpr, self.image, self.pixel, self.mode = fpr, image, pixel, mode
        self.segmentation_rule, self.segmentation_k = segmentation_rule, segmentation_k

    @torch.no_grad()
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "calibration_dataloader"):
            return
        records = datamodule.checked_records()["calibration"]
        masks = datamodule.has_masks and all(r.mask_path or not r.gt_label for r in records)
        metrics = AnomalyMetrics(pixel=masks) if any(r.gt_label for r in records) else None
        pl_module.eval()
        scores, maps, labels, categories = [], [], [], []
        with trainer.precision_plugin.forward_context():
            for batch in datamodule.calibration_dataloader():
                anomaly_map, pred_score = pl_module.predict_maps(batch["image"].to(pl_module.device))
                scores.append(pred_score.float().cpu())
                maps.append(anomaly_map.float().cpu())
                labels.append(batch["gt_label"].cpu())
                categories += batch.get("category") or [""] * len(pred_score)
                if metrics is not None:
                    metrics.update(pred_score, batch["gt_label"], anomaly_map, batch["gt_mask"])
        if metrics is not None:
            labelled = {f"val/labelled_{k}": v for k, v in metrics.compute().items() if v is not None}
            log.info(
                "Validation on the dataset's labelled validation split (%d images): %s", len(records), _shown(labelled)
            )
            _hand_on(trainer, labelled)
        post = pl_module.post
        if scores:
            scores, maps, labels = torch.cat(scores), torch.cat(maps), torch.cat(labels).bool()
        members = getattr(datamodule, "members", None)
        if not members:
            self._set(trainer, post, scores, maps, labels, bool(datamodule.has_masks))
            return
        # A unified run: each category's thresholds from its own validation images, none of the model's own.
        for category, member in members.items():
            chosen = torch.tensor([c == category for c in categories], dtype=torch.bool)
            post.forget_thresholds()
            mine = (scores[chosen], maps[chosen], labels[chosen]) if len(scores) else (scores, maps, labels)
            self._set(trainer, post, *mine, bool(member.has_masks), category)
            post.keep_for(category)
        post.forget_thresholds()

    def _set(
        self,
        trainer: L.Trainer,
        post,
        scores,
        maps,
        labels,
        masks: bool,  # noqa: ANN001
        category: str | None = None,
    ) -> None:
        """``post``'s thresholds from the validation images' ``scores`` and ``maps`` (and ``labels``:
        anomalous ones where the split has them), or as fixed by hand; ``masks``: whether the
        dataset has pixel masks (a segmentation threshold then); ``category``: whose they are."""
        of, image = f" of {category}" if category else "", self.image
        if len(scores):
            normal = ~labels
            if normal.any():
                post.calibrate(scores[normal], maps[normal], self.fpr)
                log.info(
                    "Thresholds%s from %d normal validation images at FPR %g: image %.6g, pixel %.6g",
                    of,
                    int(normal.sum()),
                    self.fpr,
                    float(post.image_threshold),
                    float(post.pixel_threshold),
                )
                if self.segmentation_rule is not None and masks:
                    self._segmentation_threshold(trainer, maps[normal], float(post.pixel_threshold), category)
            if labels.any() and normal.any():
                best, f1 = f1_optimal_threshold(scores, labels)
                use = self.mode == "f1" and image is None
                image = best if use else image
                how = ", used (threshold.mode=f1)" if use else "; threshold.mode=f1 uses it"
                log.info(
                    "F1-optimal image threshold%s on %d labelled validation images: %.6g (F1 %.3f)%s",
                    of,
                    len(labels),
                    best,
                    f1,
                    how,
                )
            elif self.mode == "f1":
                log.warning(
                    "threshold.mode=f1 needs labelled anomalous validation images (a val/ folder)%s: "
                    "the threshold is set at FPR %g instead",
                    of,
                    self.fpr,
                )
        if not post.calibrated and image is None:
            log.warning(
                "No normal validation images%s (dataset.val_fraction is 0, or rounds to none of so few "
                "training images): no thresholds; raise dataset.val_fraction, or set threshold.image "
                "and threshold.pixel by hand",
                of,
            )
        post.set_thresholds(image, self.pixel)

    def _segmentation_threshold(
        self, trainer: L.Trainer, normal_maps: torch.Tensor, pixel_threshold: float, category: str | None = None
    ) -> None:
        threshold = segmentation_threshold(normal_maps, self.segmentation_rule, self.segmentation_k, pixel_threshold)
        rule = f"mean + {self.segmentation_k:g} std" if self.segmentation_rule == "mean_std" else f"FPR {self.fpr:g}"
        of = f" of {category}" if category else ""
        log.info("Segmentation threshold%s (%s of the normal validation pixels): %.6g", of, rule, threshold)
        _hand_on(trainer, {f"val/{category + '/' if category else ''}segmentation_threshold": threshold})


class SyntheticValidation(L.Callback):
    """After training, scores the validation images as they are and each with a synthetic anomaly
    (DRAEM-style, anomalib's Perlin generator with the bundled anomaly source, the same anomaly
    for a given image in every run and for every method) and keeps the metrics as the run's
    ``validation`` (metrics.json, and ``val/<metric>`` in the loggers): a pixel-level objective for
    choosing settings (``optimized_metric``, sweeps, defaults) that never looks at the test split.

    ADPS trains on anomalies of this kind, so its numbers here flatter it against other methods:
    compare a method's own settings with them, not methods with one another.

    The dataset's own labelled validation split, where it has one, is scored by :class:`Calibrate`.

    Runs when training ends (``on_train_end``, before any callback's ``on_fit_end``) and hands its
    metrics on as ``trainer.callback_metrics["val/<metric>"]``, where the test's evaluation reads them."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        validation = synthetic_validation(trainer, pl_module)
        if validation is not None:
            log.info(
                "Validation with synthetic anomalies (%d images): %s",
                2 * len(trainer.datamodule.val_set),
                _shown(validation),
            )
            _hand_on(trainer, validation)


@torch.no_grad()
def synthetic_validation(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float] | None:
    """The metrics of :class:`SyntheticValidation` (``val/<metric>``) for the model as it is now;
    None where the datamodule has no validation images. Leaves the modules' train/eval modes and the
    random generators as it found them, so that it can score a model in the middle of training."""
    datamodule = trainer.datamodule
    if not hasattr(datamodule, "synthetic_validation_dataloader") or not datamodule.val_set:
        return None

    modes = {m: m.training for m in pl_module.modules()}
    generators = random.getstate(), np.random.get_state()
    metrics = AnomalyMetrics(pixel=True)
    pl_module.eval()
    try:
        with torch.random.fork_rng(devices=[]), trainer.precision_plugin.forward_context():
            for batch in datamodule.synthetic_validation_dataloader(AnomalySynthesizer(probability=1.0)):
                anomaly_map, pred_score = pl_module.predict_maps(batch["image"].to(pl_module.device))
                metrics.update(pred_score, batch["gt_label"], anomaly_map, batch["gt_mask"])
    finally:
        for module, training in modes.items():
            module.training = training
        random.setstate(generators[0])
        np.random.set_state(generators[1])
    return {f"val/{k}": v for k, v in metrics.compute().items() if v is not None}


def _hand_on(trainer: L.Trainer, validation: dict[str, float]) -> None:
    """Validation metrics into ``trainer.callback_metrics`` (where the evaluation reads them at
    ``on_fit_end``) and the loggers (val/pixel_ap etc.: what a W&B sweep's metric names)."""
    trainer.callback_metrics.update({k: torch.tensor(v) for k, v in validation.items()})
    for logger in trainer.loggers:
        logger.log_metrics(validation, trainer.global_step)


def _shown(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in metrics.items())


def f1_optimal_threshold(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """The image threshold with the best F1 (anomalous = score above it), and that F1."""
    from torchmetrics.functional.classification import binary_precision_recall_curve

    precision, recall, thresholds = binary_precision_recall_curve(scores, labels.int())
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    best = int(f1[:-1].argmax())  # the last point has no threshold
    # torchmetrics counts score >= threshold as anomalous; adkd decides score > threshold
    below = scores[scores < thresholds[best]]
    threshold = float(below.max()) if len(below) else float(thresholds[best]) - 1e-6
    return threshold, float(f1[best])


def _numpy_state() -> tuple:
    """numpy's generator state with its key array as a tensor (checkpoints load with weights_only=True,
    which refuses numpy arrays)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return name, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(gauss)
