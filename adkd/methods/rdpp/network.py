"""RD++ (Tien et al., CVPR 2023, "Revisiting Reverse Distillation"): RD4AD with a multi-projection
layer between the frozen teacher and the bottleneck, trained to map the teacher's features of a
noisy image onto those of the clean one and away from the noisy ones.

As the official code builds it: the teacher, OCBE bottleneck and reverse decoder are RD4AD's
(reused from :mod:`adkd.methods.rd4ad`); one projection per tapped scale, four 3x3 convolutions
c -> c/2 -> c/4 -> c/2 -> c with bias, each followed by InstanceNorm (no affine) and LeakyReLU
(0.01), the last one too. The decoder reconstructs the teacher's raw features from the bottleneck
of the projected ones; the anomaly map is RD4AD's (1 - cos per scale, upsampled and summed).
"""

from __future__ import annotations

import torch
from torch import nn

from adkd.methods.components.maps import combine_scales, cosine_distance
from adkd.methods.rd4ad.network import RD4ADNetwork


class InstanceNorm(nn.Module):
    """``nn.InstanceNorm2d(affine=False)`` written out (two passes: the mean, then the variance
    about it). The fused operator exports as ONNX InstanceNormalization, which ONNX Runtime
    computes otherwise: on the low-variance channels of a young projection the exported maps then
    left the checkpoint's by 2e-4 of their range, past the export's parity check; written out,
    both run the same reductions."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=(2, 3), keepdim=True)
        return centred / torch.sqrt(centred.pow(2).mean(dim=(2, 3), keepdim=True) + self.eps)


class Projection(nn.Sequential):
    def __init__(self, channels: int) -> None:
        widths = [channels, channels // 2, channels // 4, channels // 2, channels]
        layers = []
        for c_in, c_out in zip(widths, widths[1:], strict=False):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), InstanceNorm(), nn.LeakyReLU()]
        super().__init__(*layers)


class RDPPNetwork(RD4ADNetwork):
    """``network(images, noisy)`` (training): a dict of the teacher's features of both images,
    their projections and the student's reconstruction of the clean image's features."""

    # Instance normalisation over a small map (2x2 at stride 16 of a 32 px image) divides float
    # rounding by a tiny spread: ONNX Runtime's maps then differ from torch's by 2.4e-4 of their
    # range at 32 px, 5.7e-5 at 64 px (measured after one epoch on the test fixture).
    export_tolerance = 1e-3

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - RD4ADNetwork's
        super().__init__(*args, **kwargs)
        self.projection = nn.ModuleList(Projection(c) for c in self.teacher.channels)

    def project(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [p(f) for p, f in zip(self.projection, feats, strict=True)]

    def forward(self, images: torch.Tensor, noisy: torch.Tensor | None = None) -> dict:
        with torch.no_grad():
            teacher = self.teacher(images)
            teacher_noisy = self.teacher(noisy) if noisy is not None else None
        projected = self.project(teacher)
        return {
            "teacher": teacher,
            "student": self.student(self.bottleneck(projected)),
            "projected": projected,
            "teacher_noisy": teacher_noisy,
            "projected_noisy": self.project(teacher_noisy) if noisy is not None else None,
        }

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        out = self(images)
        maps = [cosine_distance(t, s) for t, s in zip(out["teacher"], out["student"], strict=True)]
        # RD++'s official code keeps RD4AD's cal_anomaly_map: aligned corners (see RD4ADNetwork.anomaly_map)
        return combine_scales(maps, images.shape[-2:], align_corners=True)
