"""Student-teacher feature pyramid matching (Wang et al., BMVC 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adkd.backbones import FeatureExtractor


class STFPMNetwork(nn.Module):
    """Pretrained frozen teacher; student of the same architecture from random init."""

    def __init__(
        self,
        backbone: str = "resnet18",
        layers: list[int] = (1, 2, 3),
        pretrained: bool = True,
        weights: str | None = None,
        combine: str = "mul",
    ) -> None:
        super().__init__()
        if combine not in ("mul", "add"):
            raise ValueError(f"combine must be 'mul' or 'add', got {combine!r}")
        self.combine = combine
        self.teacher = FeatureExtractor(backbone, layers, pretrained, weights, frozen=True)
        self.student = FeatureExtractor(backbone, layers, pretrained=False, frozen=False)

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.no_grad():
            teacher = self.teacher(images)
        return teacher, self.student(images)

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        teacher, student = self(images)
        out = None
        for t, s in zip(teacher, student, strict=True):
            d = 0.5 * (F.normalize(t.float(), dim=1) - F.normalize(s.float(), dim=1)).pow(2).sum(1, keepdim=True)
            d = F.interpolate(d, size=images.shape[-2:], mode="bilinear", align_corners=False)
            out = d if out is None else (out * d if self.combine == "mul" else out + d)
        return out
