"""EfficientAD as a LightningModule: the teacher's statistics before training, the four losses, the
map quantiles from the validation images."""

from __future__ import annotations

import logging
import math

import torch
from torch.utils.data import DataLoader

from adkd.methods.base import AnomalyModule
from adkd.methods.components.maps import squared_distance
from adkd.methods.efficientad.images import PenaltyImages, endless, image_folder
from adkd.methods.efficientad.loss import autoencoder_losses, hard_feature_loss, penalty_loss
from adkd.methods.efficientad.network import EfficientADNetwork
from adkd.methods.efficientad.teacher import load_teacher, resolve_teacher, ways_out

log = logging.getLogger(__name__)


class EfficientAD(AnomalyModule):
    """EfficientAD (conf/method/efficientad.yaml; Batzner et al., WACV 2024). As the paper's
    Algorithm 1 and the official code (nelson1425/EfficientAD) train it:

    - before training, the teacher's per-channel mean and standard deviation over the training
      images; the teacher's outputs are standardised with them from then on;
    - each step: the student's hard feature loss (the mean of the squared teacher-student
      differences at or above their 0.999 quantile) plus the penalty (mean square of the student's
      first half on an ImageNet-like image: ``penalty_images``), the autoencoder's loss against the
      teacher and the student's second half's loss against the autoencoder, both on the step's
      images given one of brightness, contrast or saturation with a factor from U(0.8, 1.2) (per
      image, as the official data loader does); all four summed with weight 1;
    - Adam (lr 1e-4, weight decay 1e-5) over the student and the autoencoder, the rate x0.1 at 95%
      of the steps (``steps``: 70,000 in the paper, at batch 1);
    - the maps' 0.9 and 0.995 quantiles (q_a, q_b) on the validation images, with the final weights;
      the map is 0.5 (0.1 (M_ST - q_a^ST) / (q_b^ST - q_a^ST)) + the same for the autoencoder map,
      padded and resized to the image (:meth:`EfficientADNetwork.anomaly_map`); the image score its
      maximum, no smoothing.

    Where the two references differ, this follows the official code and the paper, not anomalib 2.7
    (``EfficientAd``, with the fixes of its PR 2015: batch 1, the official teachers, normalisation
    inside the networks, which this shares): anomalib takes the quantiles of the maps after their
    zero padding and resizing to the image (the zeros and the interpolated pixels count among the
    values, which lowers both quantiles), the official code and the paper on the PDN's own output
    (56 x 56 at 256 px), as here; anomalib pads each map with zeros before scaling it (its 4-pixel
    border then reads -0.1 q_a / (q_b - q_a), below every normal pixel), the official code pads the
    combined, scaled map (a border of 0), as here; anomalib draws one augmentation for the whole
    batch, the official code one per image, as here (the same at batch 1).

    Ours: the quantiles are set at every validation pass (adkd's validation split, held out of the
    training images, never the test split), so the last one, after the last step, sets the
    model's; a run that stops at ``steps`` in the middle of an epoch validates there first. The
    validation loss (``val/loss``, what ``budget=converged`` watches) is the hard, autoencoder and
    student-autoencoder losses on the plain validation images (no penalty, no augmentation). Penalty
    images, one a step (``penalty_batch_size``, the paper's batch 1), come from a folder, from the
    images that ship with scikit-image (``bundled``: a stand-in for ImageNet, with a warning) or not
    at all (``none``). The teacher: ``teacher_weights`` (:mod:`adkd.methods.efficientad.teacher`).
    """

    def __init__(
        self,
        network: EfficientADNetwork,
        size: str = "s",
        teacher_weights: str | None = None,
        penalty_images: str | None = "bundled",
        penalty_batch_size: int = 1,
        steps: int | None = 70_000,
        lr_decay_at: float = 0.95,
        lr_decay: float = 0.1,
        hard_quantile: float = 0.999,
        **shared,  # noqa: ANN003
    ) -> None:
        super().__init__(network, **shared)
        if steps is not None and steps < 1:
            raise ValueError(f"method.steps must be 1 or more (or null: the epochs decide), got {steps}")
        if not 0 < lr_decay_at <= 1:
            raise ValueError(f"method.lr_decay_at is a share of the steps, in (0, 1]; got {lr_decay_at}")
        self.size, self.teacher_weights = size, teacher_weights
        self.penalty_images, self.penalty_batch_size = penalty_images, penalty_batch_size
        self.steps, self.lr_decay_at, self.lr_decay, self.hard_quantile = steps, lr_decay_at, lr_decay, hard_quantile
        self._penalty = None  # an endless iterator of penalty batches, while training
        self._val_maps: list[tuple[torch.Tensor, torch.Tensor]] = []

    # -- before training -----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """The teacher's weights, when training starts (a checkpoint brings its own)."""
        if stage != "fit":
            return
        state = resolve_teacher(self.teacher_weights, self.size)
        if state is None:
            log.warning(
                "EfficientAD: the teacher is random (method.teacher_weights=null); the paper's teacher is "
                "distilled from WideResNet-101 on ImageNet.\n%s",
                ways_out(self.size),
            )
        else:
            load_teacher(self.network.teacher, state, str(self.teacher_weights), self.size)
            log.info("EfficientAD: teacher weights from %s", self.teacher_weights)

    def on_train_start(self) -> None:
        if self.global_step == 0:  # a resumed run has them in its checkpoint
            self.network.set_teacher_statistics(batch["image"].to(self.device) for batch in self._statistics_loader())
        folder = image_folder(self.penalty_images, "penalty images", "method.penalty_images")
        if folder is None:
            self._penalty = None
            return
        generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
        loader = DataLoader(
            PenaltyImages(folder, self._image_size()),
            batch_size=self.penalty_batch_size,
            shuffle=True,
            generator=generator,
            num_workers=0,
            drop_last=False,
        )
        self._penalty = endless(loader)

    def _statistics_loader(self):  # noqa: ANN202
        """The training images, all of them and as they are: the datamodule's training set (every
        rank sees all of it), else the trainer's training loader."""
        datamodule = getattr(self.trainer, "datamodule", None)
        train_set = getattr(datamodule, "train_set", None)
        if train_set is not None and getattr(train_set, "synthesizer", None) is None:
            return DataLoader(train_set, batch_size=getattr(datamodule, "eval_batch_size", 1), shuffle=False)
        return self.trainer.train_dataloader

    def _image_size(self) -> int:
        datamodule = getattr(self.trainer, "datamodule", None)
        if getattr(datamodule, "image_size", None):
            return int(datamodule.image_size)
        return int(next(iter(self.trainer.train_dataloader))["image"].shape[-1])

    # -- training ------------------------------------------------------------------------------
    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """One of brightness, contrast or saturation, by a factor from U(0.8, 1.2), per image (official)."""
        from torchvision.transforms.v2 import functional as TF

        adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
        out = []
        for image in images:
            choice = int(torch.randint(0, 3, ()))
            factor = float(torch.empty(()).uniform_(0.8, 1.2))
            out.append(adjust[choice](image, factor))
        return torch.stack(out)

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        images = batch["image"]
        penalty = next(self._penalty).to(images.device) if self._penalty is not None else None
        out = self.network(images, augmented=self.augment(images), penalty=penalty)
        c = self.network.out_channels
        losses = {"hard": hard_feature_loss(out["teacher"], out["student"], self.hard_quantile)}
        if penalty is not None:
            losses["penalty"] = penalty_loss(out["student_penalty"], c)
        losses.update(autoencoder_losses(out["teacher_aug"], out["ae_aug"], out["student_aug"]))
        losses["loss"] = sum(losses.values())
        return losses

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:  # noqa: ANN001
        if self.steps is not None and self.global_step >= self.steps:
            self.trainer.should_stop = True  # Lightning validates once more (the quantiles), then stops

    def total_steps(self) -> int:
        """The steps this run will take: ``steps``, or fewer where the epochs end first."""
        planned = self.trainer.estimated_stepping_batches
        if self.steps is None:
            return int(planned)
        return int(min(self.steps, planned)) if math.isfinite(planned) else int(self.steps)

    def configure_optimizers(self):  # noqa: ANN201
        optimizer = super().configure_optimizers()
        milestone = max(1, int(self.lr_decay_at * self.total_steps()))
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[milestone], gamma=self.lr_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- validation: the loss to watch and the map quantiles -----------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_maps = []

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        images = batch["image"]
        net, c = self.network, self.network.out_channels
        teacher, student, ae = net.teacher_features(images), net.student(images), net.ae(images)
        losses = {"hard": hard_feature_loss(teacher, student, self.hard_quantile)}
        losses.update(autoencoder_losses(teacher, ae, student[:, c:]))
        losses["loss"] = sum(losses.values())
        self._val_maps.append(
            (squared_distance(teacher, student[:, :c]).cpu(), squared_distance(ae, student[:, c:]).cpu())
        )
        self._log_losses(losses, "val", len(images))
        return losses

    def on_validation_epoch_end(self) -> None:
        if self._val_maps and not self.trainer.sanity_checking:
            st, ae = zip(*self._val_maps, strict=True)
            self.network.set_map_quantiles(list(st), list(ae))
        self._val_maps = []

    def on_train_end(self) -> None:
        if torch.isnan(self.network.q_st_a):
            log.warning(
                "EfficientAD: no validation images were scored, so the maps are not normalised by their "
                "quantiles (dataset.val_fraction is 0, or validation was switched off)"
            )
        self._penalty = None

    @torch.no_grad()
    def fit_example(self, images: torch.Tensor) -> None:
        """Teacher statistics and map quantiles from ``images`` (for speed and layout checks)."""
        self.network.set_teacher_statistics([images])
        st, ae = self.network.raw_maps(images)
        self.network.set_map_quantiles(st, ae)
