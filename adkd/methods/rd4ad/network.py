"""Reverse distillation (Deng & Li, CVPR 2022): frozen encoder, OCBE bottleneck, reverse decoder.

All widths follow the teacher's tapped channels c_1..c_n instead of WRN-50's 256/512/1024, so any
registered backbone works; with wide_resnet50_2 the shapes are the paper's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

from adkd.backbones import FeatureExtractor


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class OCBE(nn.Module):
    """One-class bottleneck embedding: every tapped scale is brought to the deepest one's
    resolution by stride-2 3x3 conv+BN+ReLU steps (c_i -> c_{i+1} -> ... -> c_n), concatenated,
    and fused by ``blocks`` ResNet bottleneck blocks, the first with stride 2 (out: 2*c_n)."""

    def __init__(self, channels: list[int], blocks: int = 3) -> None:
        super().__init__()
        n = len(channels)
        self.down = nn.ModuleList(
            nn.Sequential(*[conv_bn_relu(channels[j], channels[j + 1], 2) for j in range(i, n - 1)]) for i in range(n)
        )
        c = channels[-1]
        inplanes, planes = c * n, c // 2  # Bottleneck: out = 4*planes = 2c; width = planes*128/64 = c
        downsample = nn.Sequential(nn.Conv2d(inplanes, 4 * planes, 1, 2, bias=False), nn.BatchNorm2d(4 * planes))
        layers = [Bottleneck(inplanes, planes, 2, downsample, base_width=128)]
        layers += [Bottleneck(4 * planes, planes, base_width=128) for _ in range(blocks - 1)]
        self.fuse = nn.Sequential(*layers)
        self.out_channels = 4 * planes

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.fuse(torch.cat([down(f) for down, f in zip(self.down, feats, strict=True)], dim=1))


class DecoderBlock(nn.Module):
    """A ResNet bottleneck run backwards: the 3x3 conv becomes a 2x2 stride-2 transposed conv
    when the block upsamples (first block of each decoder stage)."""

    def __init__(self, cin: int, cout: int, upsample: bool) -> None:
        super().__init__()
        width = cout // 2
        mid = (
            nn.ConvTranspose2d(width, width, 2, 2, bias=False)
            if upsample
            else nn.Conv2d(width, width, 3, 1, 1, bias=False)
        )
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            mid, nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip
        if upsample:
            self.skip = nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, 2, bias=False), nn.BatchNorm2d(cout))
        elif cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        else:
            self.skip = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class ReverseDecoder(nn.Module):
    """Student: from the bottleneck embedding back up to every tapped scale, deepest first."""

    def __init__(self, in_channels: int, channels: list[int], blocks: list[int]) -> None:
        super().__init__()
        stages, cin = [], in_channels
        for cout, n in zip(reversed(channels), blocks, strict=False):
            stages.append(
                nn.Sequential(DecoderBlock(cin, cout, True), *[DecoderBlock(cout, cout, False) for _ in range(n - 1)])
            )
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[::-1]  # shallowest first, aligned with the teacher's features


def cosine_distance_map(
    teacher: list[torch.Tensor], student: list[torch.Tensor], size: tuple[int, int]
) -> torch.Tensor:
    """Sum over scales of the per-position 1 - cos(t, s) (over channels), upsampled to ``size``."""
    out = 0
    for t, s in zip(teacher, student, strict=True):
        d = 1 - F.cosine_similarity(t.float(), s.float(), dim=1).unsqueeze(1)
        out = out + F.interpolate(d, size=size, mode="bilinear", align_corners=False)
    return out


class RD4ADNetwork(nn.Module):
    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: list[int] = (1, 2, 3),
        pretrained: bool = True,
        weights: str | None = None,
        bottleneck_blocks: int = 3,
        decoder_blocks: list[int] = (3, 4, 6),
    ) -> None:
        super().__init__()
        self.teacher = FeatureExtractor(backbone, layers, pretrained, weights, frozen=True)
        ratios = [b / a for a, b in zip(self.teacher.strides, self.teacher.strides[1:], strict=False)]
        if any(r != 2 for r in ratios):
            raise ValueError(f"RD4AD needs consecutive stages (strides doubling), got strides {self.teacher.strides}")
        channels = self.teacher.channels
        self.bottleneck = OCBE(channels, bottleneck_blocks)
        self.student = ReverseDecoder(self.bottleneck.out_channels, channels, list(decoder_blocks))

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.no_grad():
            teacher = self.teacher(images)
        return teacher, self.student(self.bottleneck(teacher))

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        teacher, student = self(images)
        return cosine_distance_map(teacher, student, images.shape[-2:])
