"""Student-teacher feature pyramid matching (Wang et al., BMVC 2021)."""

from __future__ import annotations

import torch
from torch import nn

from adkd.backbones import FeatureExtractor
from adkd.methods.components.maps import combine_scales, normalized_distance


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
        maps = [normalized_distance(t, s) for t, s in zip(teacher, student, strict=True)]
        return combine_scales(maps, images.shape[-2:], "product" if self.combine == "mul" else "sum")
