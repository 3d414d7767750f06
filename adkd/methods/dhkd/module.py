"""DHKD as a LightningModule: flow teacher by NLL, denoising student by reconstruction + affinity."""

from __future__ import annotations

import torch

from adkd.methods.base import AnomalyModule
from adkd.methods.dhkd.network import DHKDNetwork, affinity


class DHKD(AnomalyModule):
    """Which parts are the paper's and which are ours: see :mod:`adkd.methods.dhkd.network` and
    conf/method/dhkd.yaml.

    ``schedule``: ``sequential`` trains the flow alone for the first ``teacher_fraction`` of the
    epochs, then the student against the frozen flow (a one-epoch run falls back to joint);
    ``joint`` trains both from the start (the student's target is the flow's current z, without
    gradient into the flow).
    """

    def __init__(
        self,
        network: DHKDNetwork,
        flow_weight_decay: float = 1e-5,
        noise_sigma: float = 0.5,
        recon_weight: float = 1.0,
        affinity_weight: float = 1.0,
        affinity_size: int = 16,
        schedule: str = "sequential",
        teacher_fraction: float = 0.5,
        **shared,  # noqa: ANN003
    ) -> None:
        super().__init__(network, **shared)
        if schedule not in ("sequential", "joint"):
            raise ValueError(f"schedule must be 'sequential' or 'joint', got {schedule!r}")
        if schedule == "sequential" and not 0 < teacher_fraction < 1:
            raise ValueError(f"teacher_fraction must be in (0, 1) for the sequential schedule, got {teacher_fraction}")
        self.flow_weight_decay = flow_weight_decay
        self.noise_sigma = noise_sigma
        self.recon_weight, self.affinity_weight, self.affinity_size = recon_weight, affinity_weight, affinity_size
        self.schedule, self.teacher_fraction = schedule, teacher_fraction

    def trainable_parameters(self):
        groups = [
            {"params": [p for p in self.network.teacher.parameters() if p.requires_grad]},
            {"params": [p for p in self.network.student.parameters() if p.requires_grad]},
        ]
        groups[0]["weight_decay"] = self.flow_weight_decay
        return groups

    def phase(self) -> str:
        """'teacher', 'student' or 'joint' for the current epoch."""
        if self.schedule == "joint":
            return "joint"
        max_epochs = self.trainer.max_epochs if self._trainer is not None else 1
        if max_epochs < 2:  # no room for two stages: a one-epoch run trains both at once
            return "joint"
        teacher_epochs = min(max(1, round(self.teacher_fraction * max_epochs)), max_epochs - 1)
        return "teacher" if self.current_epoch < teacher_epochs else "student"

    def early_stopping_phase(self) -> str | None:
        """The flow's stage runs its share of the epochs; early stopping watches the student's."""
        phase = self.phase()
        return None if phase == "teacher" else phase

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        phase = self.phase()
        noise = self.noise_sigma if self.training else 0.0
        out = self.network(batch["image"], noise_sigma=noise, teacher_grad=phase != "student")
        losses = {"nll": out["nll"]}
        targets = [z.detach() for z in out["teacher"]]
        recon = sum((s.float() - z).pow(2).mean() for s, z in zip(out["student"], targets, strict=True))
        losses["recon"] = recon / len(targets)
        if self.affinity_weight > 0:
            aff = sum(
                (affinity(s, self.affinity_size) - affinity(z, self.affinity_size)).pow(2).mean()
                for s, z in zip(out["student"], targets, strict=True)
            )
            losses["affinity"] = aff / len(targets)
        student = self.recon_weight * losses["recon"] + self.affinity_weight * losses.get("affinity", 0.0)
        losses["loss"] = {"teacher": out["nll"], "student": student, "joint": out["nll"] + student}[phase]
        return losses
