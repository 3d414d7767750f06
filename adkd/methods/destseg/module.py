"""DeSTSeg as a LightningModule: a denoising stage for the student, then a segmentation stage."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adkd.data.synthesis import AnomalySynthesizer, anomalous_batch
from adkd.methods.base import AnomalyModule
from adkd.methods.destseg.loss import denoising_loss, segmentation_loss
from adkd.methods.destseg.network import DeSTSegNetwork


class DeSTSeg(AnomalyModule):
    """DeSTSeg (conf/method/destseg.yaml). Official code: every training image gets a synthetic
    anomaly; for the first 1000 of 5000 steps (``student_fraction`` 0.2 of the epochs here) only
    the student trains, on :func:`~adkd.methods.destseg.loss.denoising_loss`; then only the
    segmentation network, on focal (gamma 4) + L1, with the student frozen (BatchNorm in eval
    mode); SGD, momentum 0.9, weight decay 1e-4, lr 0.4 for the student (``lr``, set by the
    budget), 0.1 for the segmentation blocks (``segmentation_lr``) and 0.01 for its head
    (``head_lr``). The map is the segmentation's probability, the image score the mean of its top
    100 pixels at 256 px (``post.topk``). An epoch's last batch is not trained on when it holds one
    image."""

    def __init__(
        self,
        network: DeSTSegNetwork,
        synthesis: dict | None = None,
        student_fraction: float = 0.2,
        segmentation_lr: float = 0.1,
        head_lr: float = 0.01,
        focal_gamma: float = 4.0,
        **shared,  # noqa: ANN003
    ) -> None:
        super().__init__(network, **shared)
        if not 0 < student_fraction < 1:
            raise ValueError(f"student_fraction must be in (0, 1), got {student_fraction}")
        self.synthesizer = AnomalySynthesizer(**(synthesis or {}))
        self.student_fraction, self.focal_gamma = student_fraction, focal_gamma
        self.segmentation_lr, self.head_lr = segmentation_lr, head_lr

    def phase(self) -> str:
        """'student' for the first ``student_fraction`` of the epochs, then 'segmentation'."""
        max_epochs = self.trainer.max_epochs if self._trainer is not None else 1
        if max_epochs < 2:
            return "student"
        student_epochs = min(max(1, round(self.student_fraction * max_epochs)), max_epochs - 1)
        return "student" if self.current_epoch < student_epochs else "segmentation"

    def early_stopping_phase(self) -> str | None:
        """The student's stage runs its share of the epochs; early stopping watches the segmentation's."""
        return None if self.phase() == "student" else "segmentation"

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> int | None:
        # A batch of one image cannot train the segmentation's ASPP (its pooled branch meets
        # BatchNorm with one value per channel): an epoch's last batch is skipped when it holds one
        # image (-1 ends Lightning's epoch). The official loader drops every incomplete last batch
        # (drop_last=True); adkd keeps the others, as its other methods do: on small training sets
        # (the tests' 11 images at batch 4) dropping them costs a quarter of the steps.
        if batch_idx > 0 and len(batch["image"]) == 1:
            return -1
        if self.phase() == "segmentation":
            self.network.student.eval()  # frozen, BatchNorm statistics too

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        images, mask, clean = anomalous_batch(batch, self.synthesizer)
        net = self.network
        if self.phase() == "student":
            with torch.no_grad():
                teacher = [F.normalize(t, dim=1) for t in net.teacher(clean)]
            student = [F.normalize(s, dim=1) for s in net.student(images)]
            losses = {"denoise": denoising_loss(teacher, student) * self.ranks}  # summed over the batch
            losses["loss"] = losses["denoise"]
            return losses
        with torch.no_grad():
            teacher, student = net.features(images)
        losses = segmentation_loss(net.segment(teacher, student), mask, self.focal_gamma)
        losses["loss"] = losses["focal"] + losses["l1"]
        return losses

    def trainable_parameters(self) -> list[dict]:
        seg = self.network.segmentation
        return [
            {"params": list(self.network.student.parameters())},  # at the optimiser's lr
            {"params": list(seg.res.parameters()), "lr": self.segmentation_lr},
            {"params": list(seg.head.parameters()), "lr": self.head_lr},
        ]
