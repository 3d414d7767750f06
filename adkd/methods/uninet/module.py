"""UniNet as a LightningModule: the contrastive distillation loss, and the target teacher's own rate."""

from __future__ import annotations

import torch

from adkd.methods.base import AnomalyModule
from adkd.methods.uninet.loss import select_features, uninet_loss
from adkd.methods.uninet.network import UniNetNetwork


class UniNet(AnomalyModule):
    """UniNet (conf/method/uninet.yaml). Official code: AdamW (betas 0.9/0.999, weight decay 1e-5),
    lr 5e-3 for the bottleneck and student (``lr``, set by the budget) and 1e-6 for the target
    teacher (``teacher_lr``); temperature 2; feature selection on. ``class_settings``: the official
    code's exceptions by class name (MVTec AD's bottle, cable, grid, pill and transistor train at
    temperature 0.1, transistor without feature selection and with a teacher rate of 1e-4, and
    its unified model at 0.1), applied when ``dataset`` is ``mvtec``."""

    def __init__(
        self,
        network: UniNetNetwork,
        temperature: float = 2.0,
        margin: float = 1.0,
        cosine_weight: float = 0.7,
        feature_selection: bool = True,
        teacher_lr: float = 1e-6,
        class_settings: dict | None = None,
        dataset: str | None = None,
        category: str | None = None,
        **shared,  # noqa: ANN003
    ) -> None:
        super().__init__(network, **shared)
        settings = {"temperature": temperature, "feature_selection": feature_selection, "teacher_lr": teacher_lr}
        if dataset == "mvtec" and category in (class_settings or {}):
            unknown = set(class_settings[category]) - set(settings)
            if unknown:
                raise ValueError(
                    f"class_settings.{category}: unknown settings {sorted(unknown)}; known: {sorted(settings)}"
                )
            settings.update(class_settings[category])
        if settings["temperature"] <= 0:
            raise ValueError(f"temperature must be positive, got {settings['temperature']}")
        self.temperature = float(settings["temperature"])
        self.feature_selection = bool(settings["feature_selection"])
        self.teacher_lr = float(settings["teacher_lr"])
        self.margin, self.cosine_weight = margin, cosine_weight

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        teachers, students = self.network(batch["image"])
        if self.feature_selection:
            students = select_features(students, teachers)
        return uninet_loss(teachers, students, self.temperature, self.margin, self.cosine_weight)

    def trainable_parameters(self) -> list[dict]:
        target = list(self.network.target.parameters())
        ids = {id(p) for p in target}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": rest}, {"params": target, "lr": self.teacher_lr}]
