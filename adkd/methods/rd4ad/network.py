"""Reverse distillation (Deng & Li, CVPR 2022): frozen encoder, OCBE bottleneck, reverse decoder.

All widths follow the teacher's tapped channels c_1..c_n instead of WRN-50's 256/512/1024, so any
registered backbone works; with wide_resnet50_2 the shapes are the paper's. As in the official
code, the bottleneck and decoder are built from the encoder's block type (BasicBlock for
ResNet-18/34: 2 fusion blocks and a [2, 2, 2] decoder; Bottleneck otherwise: 3 and [3, 4, 6])
and their convolutions start from Kaiming-normal (fan-out) weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from adkd.backbones import FeatureExtractor
from adkd.backbones.registry import get_spec
from adkd.methods.components.init import kaiming_init
from adkd.methods.components.maps import combine_scales, cosine_distance


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def to_deepest_scale(channels: list[int]) -> nn.ModuleList:
    """Per tapped scale, the stride-2 3x3 conv+BN+ReLU steps (c_i -> c_{i+1} -> ... -> c_n) that bring
    it to the deepest scale's resolution (none for the deepest): OCBE's, and UniNet's bottleneck's."""
    n = len(channels)
    return nn.ModuleList(
        nn.Sequential(*[conv_bn_relu(channels[j], channels[j + 1], 2) for j in range(i, n - 1)]) for i in range(n)
    )


class OCBE(nn.Module):
    """One-class bottleneck embedding: every tapped scale is brought to the deepest one's
    resolution by stride-2 3x3 conv+BN+ReLU steps (c_i -> c_{i+1} -> ... -> c_n), concatenated,
    and fused by ``blocks`` ResNet blocks of type ``block``, the first with stride 2 (out: 2*c_n)."""

    def __init__(self, channels: list[int], blocks: int = 3, block: str = "bottleneck") -> None:
        super().__init__()
        n = len(channels)
        self.down = to_deepest_scale(channels)
        c = channels[-1]
        inplanes, out = c * n, 2 * c
        downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, 2, bias=False), nn.BatchNorm2d(out))
        if block == "basic":
            layers = [BasicBlock(inplanes, out, 2, downsample)]
            layers += [BasicBlock(out, out) for _ in range(blocks - 1)]
        else:  # Bottleneck: out = 4*planes; width = planes*128/64 = c (WRN-50's 1024 at c = 1024)
            layers = [Bottleneck(inplanes, out // 4, 2, downsample, base_width=128)]
            layers += [Bottleneck(out, out // 4, base_width=128) for _ in range(blocks - 1)]
        self.fuse = nn.Sequential(*layers)
        self.out_channels = out
        kaiming_init(self)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.fuse(torch.cat([down(f) for down, f in zip(self.down, feats, strict=True)], dim=1))


class DecoderBlock(nn.Module):
    """A ResNet block run backwards: its (first) 3x3 conv becomes a 2x2 stride-2 transposed conv
    when the block upsamples (first block of each decoder stage). ``basic`` mirrors BasicBlock
    (two 3x3 convs), ``bottleneck`` mirrors Bottleneck (1x1, 3x3, 1x1 at width cout/2)."""

    def __init__(self, cin: int, cout: int, upsample: bool, block: str = "bottleneck") -> None:
        super().__init__()

        def mid(c_in: int, c_out: int) -> nn.Module:
            if upsample:
                return nn.ConvTranspose2d(c_in, c_out, 2, 2, bias=False)
            return nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)

        if block == "basic":
            self.body = nn.Sequential(
                mid(cin, cout),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
        else:
            width = cout // 2
            self.body = nn.Sequential(
                nn.Conv2d(cin, width, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                mid(width, width),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
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

    def __init__(self, in_channels: int, channels: list[int], blocks: list[int], block: str = "bottleneck") -> None:
        super().__init__()
        stages, cin = [], in_channels
        for cout, n in zip(reversed(channels), blocks, strict=False):
            first = DecoderBlock(cin, cout, True, block)
            stages.append(nn.Sequential(first, *[DecoderBlock(cout, cout, False, block) for _ in range(n - 1)]))
            cin = cout
        self.stages = nn.ModuleList(stages)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[::-1]  # shallowest first, aligned with the teacher's features


class RD4ADNetwork(nn.Module):
    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: list[int] = (1, 2, 3),
        pretrained: bool = True,
        weights: str | None = None,
        block: str = "auto",
        bottleneck_blocks: int | None = None,
        decoder_blocks: list[int] | None = None,
    ) -> None:
        super().__init__()
        if block == "auto":
            block = get_spec(backbone).block or "bottleneck"
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'auto', 'basic' or 'bottleneck', got {block!r}")
        basic = block == "basic"
        bottleneck_blocks = bottleneck_blocks or (2 if basic else 3)
        decoder_blocks = list(decoder_blocks or ((2, 2, 2) if basic else (3, 4, 6)))
        self.teacher = FeatureExtractor(backbone, layers, pretrained, weights, frozen=True)
        ratios = [b / a for a, b in zip(self.teacher.strides, self.teacher.strides[1:], strict=False)]
        if any(r != 2 for r in ratios):
            raise ValueError(f"RD4AD needs consecutive stages (strides doubling), got strides {self.teacher.strides}")
        channels = self.teacher.channels
        self.bottleneck = OCBE(channels, bottleneck_blocks, block)
        self.student = ReverseDecoder(self.bottleneck.out_channels, channels, decoder_blocks, block)

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.no_grad():
            teacher = self.teacher(images)
        return teacher, self.student(self.bottleneck(teacher))

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        teacher, student = self(images)
        maps = [cosine_distance(t, s) for t, s in zip(teacher, student, strict=True)]
        # align_corners as the official code's cal_anomaly_map (anomalib's port keeps it too; found by
        # the peer check against anomalib, see README.md beside this file)
        return combine_scales(maps, images.shape[-2:], align_corners=True)
