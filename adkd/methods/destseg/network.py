"""DeSTSeg (Zhang et al., CVPR 2023): a frozen teacher, a denoising student that must give the
teacher's features of the clean image from an image with a synthetic anomaly, and a segmentation
network on the teacher-student feature product.

As the official code (apple/ml-destseg) builds it:

- teacher: the backbone's stages 1-3 (ResNet-18: 64, 128, 256 channels at 1/4, 1/8, 1/16), frozen;
- student: an encoder of the same architecture from random weights, stages 1-4, and a decoder
  from its deepest stage alone (no skips): two BasicBlocks at 1/32, then at each finer scale a
  bilinear x2 upsampling and two BasicBlocks to that scale's channels (the first with a 1x1
  shortcut where the width changes); it returns the three teacher scales;
- segmentation: teacher and student features, each L2-normalised over channels, multiplied
  (negated, per channel), brought to 1/4 and concatenated (448 channels for ResNet-18); two
  BasicBlocks to 256, an ASPP (global pooling branch and 3x3 convolutions dilated 6, 12, 18, fused
  by a 3x3 convolution), a 3x3 conv-BN-ReLU and a 1x1 convolution to one logit at 1/4, upsampled
  bilinearly to the input size. A test pins the parameter counts to the official ones.

Ours: the student encoder starts from torchvision's initialisation (the official one from timm's,
which also zeroes each block's last BatchNorm scale).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from adkd.backbones import FeatureExtractor
from adkd.methods.components.init import kaiming_init


def basic_blocks(c_in: int, c_out: int, blocks: int = 2) -> nn.Sequential:
    """ResNet BasicBlocks at stride 1; the first has a 1x1 conv + BN shortcut where the width changes."""
    shortcut = None if c_in == c_out else nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
    rest = [BasicBlock(c_out, c_out) for _ in range(blocks - 1)]
    return nn.Sequential(BasicBlock(c_in, c_out, downsample=shortcut), *rest)


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    def __init__(self, channels: int = 256, rates: tuple[int, ...] = (6, 12, 18)) -> None:
        super().__init__()
        self.pooled = conv_bn_relu(channels, channels, kernel=1)
        self.dilated = nn.ModuleList(conv_bn_relu(channels, channels, dilation=r) for r in rates)
        self.fuse = conv_bn_relu(channels * (1 + len(rates)), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pooled(F.adaptive_avg_pool2d(x, 1)).expand(-1, -1, *x.shape[-2:])
        return self.fuse(torch.cat([pooled, *(branch(x) for branch in self.dilated)], dim=1))


class DenoisingStudent(nn.Module):
    def __init__(self, backbone: str, channels: list[int]) -> None:
        super().__init__()
        self.encoder = FeatureExtractor(backbone, [4], pretrained=False, frozen=False)
        deepest = self.encoder.channels[-1]
        outs = [deepest, *reversed(channels)]  # 512, 256, 128, 64 for ResNet-18
        pairs = zip([deepest, *outs[:-1]], outs, strict=True)
        self.decoder = nn.ModuleList(basic_blocks(c_in, c_out) for c_in, c_out in pairs)
        kaiming_init(self.decoder)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.decoder[0](self.encoder(images)[0])
        outs = []
        for stage in self.decoder[1:]:
            x = stage(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
            outs.append(x)
        return outs[::-1]  # finest first, as the teacher's


class SegmentationNet(nn.Module):
    def __init__(self, in_channels: int, width: int = 256) -> None:
        super().__init__()
        self.res = basic_blocks(in_channels, width)
        kaiming_init(self.res)
        self.head = nn.Sequential(ASPP(width), conv_bn_relu(width, width), nn.Conv2d(width, 1, 1))
        kaiming_init(self.head[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.res(x))


class DeSTSegNetwork(nn.Module):
    def __init__(
        self,
        backbone: str = "resnet18",
        layers: list[int] = (1, 2, 3),
        pretrained: bool = True,
        weights: str | None = None,
        seg_width: int = 256,
    ) -> None:
        super().__init__()
        self.teacher = FeatureExtractor(backbone, layers, pretrained, weights, frozen=True)
        ratios = [b / a for a, b in zip(self.teacher.strides, self.teacher.strides[1:], strict=False)]
        if any(r != 2 for r in ratios) or self.teacher.layers[-1] != 3:
            raise ValueError(f"DeSTSeg taps consecutive stages ending at stage 3, got layers {list(layers)}")
        self.student = DenoisingStudent(backbone, self.teacher.channels)
        self.segmentation = SegmentationNet(sum(self.teacher.channels), seg_width)

    def features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher's and student's features of the same images, each L2-normalised over channels."""
        with torch.no_grad():
            teacher = self.teacher(images)
        return [F.normalize(t, dim=1) for t in teacher], [F.normalize(s, dim=1) for s in self.student(images)]

    def segment(self, teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
        """Logits (B,1,h,w) at the finest scale from the normalised features' negated product."""
        finest = teacher[0].shape[-2:]
        product = [
            F.interpolate(-t * s, size=finest, mode="bilinear", align_corners=False)
            for t, s in zip(teacher, student, strict=True)
        ]
        return self.segmentation(torch.cat(product, dim=1))

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """(teacher's and student's normalised features, segmentation logits at the finest scale)."""
        teacher, student = self.features(images)
        return teacher, student, self.segment(teacher, student)

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        """The segmentation's probability, upsampled bilinearly to the input size (official)."""
        logits = self(images)[2]
        return F.interpolate(logits.float().sigmoid(), size=images.shape[-2:], mode="bilinear", align_corners=False)
