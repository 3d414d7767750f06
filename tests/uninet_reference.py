"""UniNet's networks and computations as the official code (pangdatangtt/UniNet, ``UniNet_lib``) defines
them, written again for the tests from its published definitions: the module names, layer order and
computations are the official ones (``BN_layer`` with ``AttnBottleneck`` at ``halve=2``, the decoder
``de_wide_resnet50_2``, ``UniNet.forward``, ``domain_related_feature_selection``, ``losses`` and
``weighted_decision_mechanism``), including what the official networks hold and never use. The teacher is
torchvision's Wide ResNet-50-2 (the official ``resnet.py`` is that network, cut after layer3).

:func:`adkd_state_dict` renames these modules' weights to adkd's, so that both can run the same weights.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch import nn
from torchvision.models import wide_resnet50_2


def conv(cin: int, cout: int, k: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, k // 2, bias=bias)


class AttnBottleneck(nn.Module):
    """``halve=2`` as the bottleneck builds it; ``conv7x7``/``conv7x7_`` as ``merge_kernel`` leaves them
    (biased 3x3 convolutions shaped like ``conv3x3``/``conv3x3_``)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        width = planes * 2  # base_width 128
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = conv(width, planes * 4, 1)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.bn4 = nn.BatchNorm2d(width // 2)
        self.bn5 = nn.BatchNorm2d(width // 2)
        self.bn6 = nn.BatchNorm2d(width // 2)
        self.bn7 = nn.BatchNorm2d(width)  # never used
        self.conv3x3 = conv(inplanes // 2, width // 2, 3, stride)
        self.conv3x3_ = conv(width // 2, width // 2, 3)
        self.conv7x7 = conv(inplanes // 2, width // 2, 3, stride, bias=True)
        self.conv7x7_ = conv(width // 2, width // 2, 3, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        a, b = torch.split(x, [c // 2, c // 2], dim=1)
        out1 = self.bn5(self.conv3x3_(self.relu(self.bn2(self.conv3x3(a)))))
        out2 = self.bn6(self.conv7x7_(self.relu(self.bn4(self.conv7x7(b)))))
        out = self.bn3(self.conv3(torch.cat([out1, out2], dim=1)))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + identity)


class BNLayer(nn.Module):
    """The official ``BN_layer(c, AttnBottleneck, 3)`` for WRN-50-2 (block expansion 4)."""

    def __init__(self, blocks: int = 3) -> None:
        super().__init__()
        inplanes, planes = 1024, 512
        downsample = nn.Sequential(conv(inplanes * 3, planes * 4, 1, 2), nn.BatchNorm2d(planes * 4))
        layers = [AttnBottleneck(inplanes * 3, planes, 2, downsample)]
        layers += [AttnBottleneck(planes * 4, planes) for _ in range(blocks - 1)]
        self.bn_layer = nn.Sequential(nn.Sequential(*layers))
        self.conv1 = conv(256, 512, 3, 2)
        self.bn1 = nn.BatchNorm2d(512)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv(512, 1024, 3, 2)
        self.bn2 = nn.BatchNorm2d(1024)
        self.conv3 = conv(512, 1024, 3, 2)
        self.bn3 = nn.BatchNorm2d(1024)
        self.conv4 = conv(4096, 2048, 1)  # never used
        self.bn4 = nn.BatchNorm2d(2048)  # never used

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        l1 = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x[0]))))))
        l2 = self.relu(self.bn3(self.conv3(x[1])))
        return self.bn_layer(torch.cat([l1, l2, x[2]], 1)).contiguous()


class DecoderBottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, upsample: nn.Module | None = None) -> None:
        super().__init__()
        width = planes * 2
        self.conv1 = conv(inplanes, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.ConvTranspose2d(width, width, 2, 2, bias=False) if stride == 2 else conv(width, width, 3)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv(width, planes * 4, 1)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.upsample(x) if self.upsample is not None else x
        return self.relu(out + identity)


class Decoder(nn.Module):
    """The official ``de_wide_resnet50_2``: layers of 3, 4 and 6 blocks from 2048 channels up to 256."""

    def __init__(self) -> None:
        super().__init__()
        self.inplanes = 2048
        self.layer1 = self._layer(256, 3)
        self.layer2 = self._layer(128, 4)
        self.layer3 = self._layer(64, 6)
        self.fc = nn.Linear(256, 1)  # never used

    def _layer(self, planes: int, blocks: int) -> nn.Sequential:
        upsample = nn.Sequential(
            nn.ConvTranspose2d(self.inplanes, planes * 4, 2, 2, bias=False), nn.BatchNorm2d(planes * 4)
        )
        layers = [DecoderBottleneck(self.inplanes, planes, 2, upsample)]
        self.inplanes = planes * 4
        layers += [DecoderBottleneck(self.inplanes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.layer1(x)
        b = self.layer2(a)
        c = self.layer3(b)
        return [c, b, a]


class OfficialUniNet(nn.Module):
    """Source teacher, target teacher, ``BN_layer`` and decoder, with ``UniNet.forward``'s pairing."""

    def __init__(self) -> None:
        super().__init__()
        wrn = wide_resnet50_2()
        wrn.layer4, wrn.fc = None, None
        self.source = wrn
        self.target = copy.deepcopy(wrn)
        self.bn = BNLayer()
        self.student = Decoder()

    @staticmethod
    def _features(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        a = net.layer1(x)
        b = net.layer2(a)
        return [a, b, net.layer3(b)]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``x``: normalised images. The teachers' six maps and the student's, as ``UniNet.forward``."""
        with torch.no_grad():
            sou = self._features(self.source, x)
        tar = self._features(self.target, x)
        bnins = [torch.cat([a, b], dim=0) for a, b in zip(tar, sou, strict=True)]
        stu = [d.chunk(dim=0, chunks=2) for d in self.student(self.bn(bnins))]
        stu = [stu[0][0], stu[1][0], stu[2][0], stu[0][1], stu[1][1], stu[2][1]]
        return sou + tar, stu


def feature_selection(xs: list[torch.Tensor], priors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``domain_related_feature_selection`` (theta = 1: the value the learnable one keeps, see adkd's)."""
    out = []
    for x, prior in zip(xs, priors, strict=True):
        b, c, h, w = x.shape
        flat = prior.view(b, c, -1)
        flat = flat - flat.max(dim=-1, keepdim=True)[0]
        weights = F.softmax(flat, dim=-1).view(b, c, h, w)
        out.append(x * (weights * (1 + prior.mean(dim=(-2, -1), keepdim=True))))
    return out


def losses(b: list[torch.Tensor], a: list[torch.Tensor], temperature: float, margin: float = 1.0, lam: float = 0.7):
    """The official ``losses`` without a mask."""
    loss = 0.0
    for s_, t_ in zip(a, b, strict=True):
        n, c, h, w = s_.shape
        s = F.normalize(s_.view(n, c, -1).transpose(1, 2), p=2, dim=2)
        t = F.normalize(t_.view(n, c, -1).transpose(1, 2), p=2, dim=2)
        cos_loss = (1 - F.cosine_similarity(s, t, dim=2)).mean()
        simi = torch.exp(torch.matmul(s, t.transpose(1, 2)) / temperature)
        simi = simi / (simi.sum(dim=2, keepdim=True) + 1e-8)
        diag = torch.diagonal(simi, dim1=1, dim2=2)
        contra = -torch.log(diag + 1e-8).mean()
        margin_n = F.relu(margin - diag).mean()
        loss += cos_loss * lam + contra * (1 - lam) + margin_n
    return loss


def scipy_blur(anomaly_map: np.ndarray) -> np.ndarray:
    return gaussian_filter(anomaly_map, sigma=4)


def weighted_decision(output_list: list[list[torch.Tensor]], alpha: float, beta: float, out_size: int, blur=scipy_blur):
    """``weighted_decision_mechanism``: ``output_list[pair]`` holds one (1, h, w) map per image;
    ``blur``: the score's smoothing (the official code's scipy ``gaussian_filter``, sigma 4)."""
    num = len(output_list[0])
    weights = []
    for i in range(num):
        peaks = [torch.max(output_list[j][i]).cpu() for j in range(len(output_list))]
        probs = F.softmax(torch.tensor(peaks), 0)
        chosen = [peaks[k].numpy() for k, p in enumerate(probs) if p > torch.mean(probs)]
        weights.append(np.max([np.mean(chosen) * alpha, beta]))
    maps = []
    for output in output_list:
        a_map = torch.cat(output, dim=0).unsqueeze(1)
        maps.append(F.interpolate(a_map, size=out_size, mode="bilinear", align_corners=True)[:, 0])
    anomaly_map = sum(maps)
    scores = []
    for i in range(num):
        top_k = int(out_size * out_size * weights[i])
        smooth = torch.tensor(blur(anomaly_map[i].numpy()))
        scores.append(float(smooth.reshape(1, -1).topk(top_k, dim=-1)[0].mean()))
    return np.array(scores), anomaly_map.numpy(), np.array(weights)


def adkd_state_dict(official: OfficialUniNet) -> dict[str, torch.Tensor]:
    """The official modules' weights under adkd's names (the never-used modules left out)."""
    out = {}

    def put(prefix: str, module: nn.Module) -> None:
        for key, value in module.state_dict().items():
            out[f"{prefix}.{key}"] = value

    for name, wrn in (("teacher", official.source), ("target", official.target)):
        put(f"{name}.stages.0.0", wrn.conv1)
        put(f"{name}.stages.0.1", wrn.bn1)
        for i in (1, 2, 3):
            put(f"{name}.stages.{i}", getattr(wrn, f"layer{i}"))
    bn = official.bn
    for prefix, module in (
        ("bottleneck.down.0.0.0", bn.conv1),
        ("bottleneck.down.0.0.1", bn.bn1),
        ("bottleneck.down.0.1.0", bn.conv2),
        ("bottleneck.down.0.1.1", bn.bn2),
        ("bottleneck.down.1.0.0", bn.conv3),
        ("bottleneck.down.1.0.1", bn.bn3),
    ):
        put(prefix, module)
    for i, block in enumerate(bn.bn_layer[0]):
        p = f"bottleneck.fuse.{i}"
        for name, module in (
            ("first.0", block.conv3x3),
            ("first.1", block.bn2),
            ("first.3", block.conv3x3_),
            ("first.4", block.bn5),
            ("second.0", block.conv7x7),
            ("second.1", block.bn4),
            ("second.3", block.conv7x7_),
            ("second.4", block.bn6),
            ("project.0", block.conv3),
            ("project.1", block.bn3),
        ):
            put(f"{p}.{name}", module)
        if block.downsample is not None:
            put(f"{p}.skip", block.downsample)
    for k, layer in enumerate((official.student.layer1, official.student.layer2, official.student.layer3)):
        for j, block in enumerate(layer):
            p = f"student.stages.{k}.{j}"
            for name, module in (
                ("body.0", block.conv1),
                ("body.1", block.bn1),
                ("body.3", block.conv2),
                ("body.4", block.bn2),
                ("body.6", block.conv3),
                ("body.7", block.bn3),
            ):
                put(f"{p}.{name}", module)
            if block.upsample is not None:
                put(f"{p}.skip", block.upsample)
    return out
