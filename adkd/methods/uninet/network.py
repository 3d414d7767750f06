"""UniNet (Wei, Jiang & Xu, CVPR 2025): two teachers, one bottleneck, one student, crossed.

As the official code builds it (pangdatangtt/UniNet, ``UniNet_lib``):

- the *source* teacher: the ImageNet backbone's layers 1-3, frozen, in eval mode;
- the *target* teacher: a copy of it that trains (at a rate 5000 times lower than the student's)
  and keeps its BatchNorm in training mode;
- the bottleneck: both teachers' features, stacked along the batch (target first), brought to the
  deepest scale as RD4AD's OCBE does and fused by three :class:`TwoBranchBlock` (the first with
  stride 2);
- the student: RD4AD's reverse decoder (:class:`adkd.methods.rd4ad.network.ReverseDecoder`, the
  official ``de_wide_resnet50_2``), run on that double batch;
- crossed pairs: the student's half decoded from the *target* teacher's features is matched with
  the *source* teacher's, and the other half with the target's: six (teacher, student) pairs.

The anomaly map is the sum over the six pairs of 1 - cos, upsampled with aligned corners; the
image score is the official *weighted decision*: the mean of the top ``share`` of the smoothed
map's pixels, with ``share`` set per image from the six pairs' maxima (:func:`decision_share`).

Any registered backbone works: the widths follow the tapped channels (WRN-50-2's are the paper's).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from adkd.backbones import FeatureExtractor
from adkd.backbones.registry import get_spec
from adkd.methods.components.init import kaiming_init
from adkd.methods.components.maps import combine_scales, cosine_distance
from adkd.methods.rd4ad.network import ReverseDecoder, to_deepest_scale


def _branch(cin: int, width: int, stride: int, bias: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, width, 3, stride, 1, bias=bias),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, 1, 1, bias=bias),
        nn.BatchNorm2d(width),
    )


class TwoBranchBlock(nn.Module):
    """The official ``AttnBottleneck`` as the bottleneck builds it (``halve=2``): the input's two
    channel halves each go through 3x3 conv-BN-ReLU-3x3 conv-BN at ``width / 2`` channels, are
    concatenated, projected to ``cout`` by a 1x1 conv and BN, added to the (downsampled) input and
    passed through ReLU.

    The second branch's convolutions carry a bias and are 3x3: the official class declares 7x7
    ones, but its ``merge_kernel``, which the bottleneck's constructor calls, replaces them with
    biased 3x3 convolutions before any training; the constructor's Kaiming initialisation then
    re-draws their weights, and their biases start at zero. Its unused ``bn7`` is left out."""

    def __init__(self, cin: int, width: int, cout: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        if cin % 2 or width % 2:
            raise ValueError(f"UniNet's bottleneck splits channels in halves: needs even widths, got {cin} and {width}")
        self.first = _branch(cin // 2, width // 2, stride, bias=False)
        self.second = _branch(cin // 2, width // 2, stride, bias=True)
        self.project = nn.Sequential(nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = downsample if downsample is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        out = self.project(torch.cat([self.first(a), self.second(b)], dim=1))
        return F.relu(out + self.skip(x))


class Bottleneck(nn.Module):
    """The official ``BN_layer``: stride-2 3x3 conv-BN-ReLU steps bring every tapped scale to the
    deepest one (c_i -> c_{i+1} -> ... -> c_n), concatenated (3 c_n channels), then ``blocks``
    :class:`TwoBranchBlock` of width c_n to 2 c_n channels, the first with stride 2. The official
    class's unused ``conv4/bn4`` are left out."""

    def __init__(self, channels: list[int], blocks: int = 3) -> None:
        super().__init__()
        n = len(channels)
        self.down = to_deepest_scale(channels)
        c = channels[-1]
        cin, out = c * n, 2 * c
        downsample = nn.Sequential(nn.Conv2d(cin, out, 1, 2, bias=False), nn.BatchNorm2d(out))
        layers = [TwoBranchBlock(cin, c, out, 2, downsample)]
        layers += [TwoBranchBlock(out, c, out) for _ in range(blocks - 1)]
        self.fuse = nn.Sequential(*layers)
        self.out_channels = out
        kaiming_init(self)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.fuse(torch.cat([down(f) for down, f in zip(self.down, feats, strict=True)], dim=1))


class UniNetNetwork(nn.Module):
    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: list[int] = (1, 2, 3),
        pretrained: bool = True,
        weights: str | None = None,
        block: str = "auto",
        decoder_blocks: list[int] | None = None,
        bottleneck_blocks: int = 3,
        alpha: float = 0.01,
        beta: float = 3e-5,
        target_batch_statistics: bool = True,
    ) -> None:
        """``block``/``decoder_blocks``: the student's, as RD4AD's (auto: the backbone's block; the
        official WRN-50-2 gives Bottleneck [3, 4, 6]). ``alpha``/``beta``: the weighted decision's
        (:func:`decision_share`). ``target_batch_statistics``: the target teacher's BatchNorm
        normalises with each training batch's statistics and updates its running ones (the
        official code); false keeps it in eval mode (the source teacher's ImageNet statistics)
        while its weights train."""
        super().__init__()
        if block == "auto":
            block = get_spec(backbone).block or "bottleneck"
        decoder_blocks = list(decoder_blocks or ((2, 2, 2) if block == "basic" else (3, 4, 6)))
        self.teacher = FeatureExtractor(backbone, layers, pretrained, weights, frozen=True)
        ratios = [b / a for a, b in zip(self.teacher.strides, self.teacher.strides[1:], strict=False)]
        if any(r != 2 for r in ratios):
            raise ValueError(f"UniNet needs consecutive stages (strides doubling), got strides {self.teacher.strides}")
        self.target = copy.deepcopy(self.teacher)  # starts as the source teacher, then trains
        self.target.frozen = False
        self.target.requires_grad_(True)
        self.target.train()
        channels = self.teacher.channels
        self.bottleneck = Bottleneck(channels, bottleneck_blocks)
        self.student = ReverseDecoder(self.bottleneck.out_channels, channels, decoder_blocks, block)
        self.alpha, self.beta = alpha, beta
        self.target_batch_statistics = target_batch_statistics
        self.train()

    @property
    def frozen_statistics(self) -> tuple[str, ...]:
        """Submodules that train in eval mode on purpose (BatchNorm statistics kept, weights trained)."""
        return () if self.target_batch_statistics else ("target",)

    def train(self, mode: bool = True) -> UniNetNetwork:
        super().train(mode)
        if not self.target_batch_statistics:
            self.target.eval()
        return self

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The six (teacher, student) pairs, as two aligned lists: source teacher's scales, then
        the target's; each matched with the student's half decoded from the *other* teacher."""
        with torch.no_grad():
            source = self.teacher(images)
        target = self.target(images)
        code = self.bottleneck([torch.cat([t, s], dim=0) for t, s in zip(target, source, strict=True)])
        b = images.shape[0]  # slices, not chunk(2): an exported graph keeps its batch size free
        decoded = self.student(code)
        from_target, from_source = [f[:b] for f in decoded], [f[b:] for f in decoded]
        return [*source, *target], [*from_target, *from_source]

    def anomaly_map(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw map (B,1,H,W), and the share of its pixels the image score averages (B,)."""
        teachers, students = self(images)
        maps = [cosine_distance(t, s) for t, s in zip(teachers, students, strict=True)]
        anomaly_map = combine_scales(maps, images.shape[-2:], align_corners=True)
        return anomaly_map, decision_share(maps, self.alpha, self.beta)


def decision_share(maps: list[torch.Tensor], alpha: float, beta: float) -> torch.Tensor:
    """The official weighted decision mechanism's share of pixels, per image: the maxima of the
    pair maps (at their own resolution), softmax-weighted; the mean of the maxima whose
    probability is above the mean probability, times ``alpha``, at least ``beta``."""
    peaks = torch.stack([m.flatten(1).amax(1) for m in maps], dim=1).float()  # (B, pairs)
    probs = peaks.softmax(dim=1)
    above = (probs > probs.mean(dim=1, keepdim=True)).float()
    # the official code's mean of an empty list is NaN, which np.max([NaN * alpha, beta]) turns into
    # NaN; the peaks are all equal then (every probability at the mean), and their mean is the value
    # a tie-free neighbour would tend to: taken here, so that a flat map still scores
    mean_above = torch.where(above.sum(1) > 0, (peaks * above).sum(1) / above.sum(1).clamp_min(1), peaks.mean(1))
    return (mean_above * alpha).clamp_min(beta)
