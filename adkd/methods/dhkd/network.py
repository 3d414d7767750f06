"""DHKD: denoised heterogeneous knowledge distillation (Tong, Li, Song).

The paper's (its abstract; no code or hyperparameters were published): the teacher is a
normalizing flow trained by exact likelihood, the student an ordinary feed-forward network, so
the pair is heterogeneous and the student cannot mimic the flow on anomalies; the student
reconstructs the teacher's representation of normal data from features with Gaussian noise
added during training; its dual-domain reconstruction blocks have a spatial and a frequency
branch (FFT, learnable filter on the spectrum, inverse FFT) that are fused; a teacher-student
affinity loss matches position-to-position similarities for global context.

Ours (after AST, Rudolph et al. 2023, the closest public flow-teacher design): a frozen
extractor gives features at several scales; each scale is standardised per channel (statistics
from the training data, see :class:`FeatureStandardizer`) and gets its own FrEIA flow of
``AllInOneBlock`` couplings with convolutional subnets, optionally conditioned on a sinusoidal
positional encoding; the teacher's representation is the flow's output z; the student maps the
(noised) standardised features to z, one stack of dual-domain blocks per scale; the anomaly map
is the squared teacher-student distance per position, upsampled and summed over scales.
"""

from __future__ import annotations

import math

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import torch
import torch.nn.functional as F
from anomalib.models.image.cflow.utils import positional_encoding_2d
from torch import nn

from adkd.backbones import FeatureExtractor
from adkd.methods.base import ExportForm
from adkd.methods.components.maps import combine_scales, squared_distance


class FeatureStandardizer(nn.Module):
    """Per-channel standardisation of extractor features, its statistics fixed from the first
    training batches (a running average until ``warmup`` batches were seen, then frozen).

    A flow needs inputs of a sane scale; raw activations differ by orders of magnitude between
    backbones and between pretrained and random weights. The statistics are buffers, so they
    travel with the checkpoint.
    """

    def __init__(self, channels: int, warmup: int = 10) -> None:
        super().__init__()
        self.warmup = warmup
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self._frozen = False  # a Python flag, so that training steps after the warm-up never sync

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self._frozen:
            self._update(x)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def _update(self, x: torch.Tensor) -> None:
        n = int(self.seen)  # reads the buffer (a host sync on a GPU) only until the warm-up is over
        if n >= self.warmup:
            self._frozen = True
            return
        mean = x.float().mean(dim=(0, 2, 3), keepdim=True)
        std = x.float().std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-4)
        self.mean.mul_(n / (n + 1)).add_(mean / (n + 1))
        self.std.mul_(n / (n + 1)).add_(std / (n + 1))
        self.seen += 1


def conv_subnet(hidden_ratio: float, kernel: int = 3):
    """Subnet constructor for FrEIA couplings: conv-ReLU-conv, zero-initialised output (identity
    start). anomalib's FastFlow block builder has the same layout but neither this zero init nor
    the positional condition that :func:`build_flow` adds, hence our own."""

    def build(c_in: int, c_out: int) -> nn.Module:
        hidden = max(8, int(round(c_in * hidden_ratio)))
        net = nn.Sequential(
            nn.Conv2d(c_in, hidden, kernel, padding=kernel // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, c_out, kernel, padding=kernel // 2),
        )
        nn.init.zeros_(net[-1].weight)
        nn.init.zeros_(net[-1].bias)
        return net

    return build


def build_flow(
    channels: int, height: int, width: int, blocks: int, hidden_ratio: float, clamp: float, cond_channels: int
) -> Ff.SequenceINN:
    flow = Ff.SequenceINN(channels, height, width)
    cond = [(cond_channels, height, width)] if cond_channels else []
    for i in range(blocks):
        flow.append(
            Fm.AllInOneBlock,
            cond=0 if cond_channels else None,
            cond_shape=cond[0] if cond else None,
            subnet_constructor=conv_subnet(hidden_ratio, kernel=3 if i % 2 == 0 else 1),
            affine_clamping=clamp,
            permute_soft=False,
        )
    return flow


class FlowTeacher(nn.Module):
    """One normalizing flow per scale. ``forward`` -> (z per scale, NLL per dimension, averaged)."""

    def __init__(
        self,
        channels: list[int],
        sizes: list[tuple[int, int]],
        blocks: int = 4,
        hidden_ratio: float = 1.0,
        clamp: float = 1.9,
        positional: int = 32,
    ) -> None:
        super().__init__()
        self.positional = positional
        self.flows = nn.ModuleList(
            build_flow(c, h, w, blocks, hidden_ratio, clamp, positional)
            for c, (h, w) in zip(channels, sizes, strict=True)
        )
        for i, (h, w) in enumerate(sizes):
            enc = positional_encoding_2d(positional, h, w) if positional else torch.zeros(0)
            self.register_buffer(f"pos{i}", enc, persistent=False)

    def forward(self, feats: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        zs, nll = [], 0.0
        for i, (flow, x) in enumerate(zip(self.flows, feats, strict=True)):
            c = [getattr(self, f"pos{i}").expand(x.shape[0], -1, -1, -1)] if self.positional else []
            with torch.autocast(x.device.type, enabled=False):  # exact likelihoods: full precision under AMP
                z, log_jac = flow(x.float(), c=c)
            dims = z[0].numel()
            nll = nll + (0.5 * z.pow(2).flatten(1).sum(1) - log_jac).mean() / dims
            zs.append(z)
        return zs, nll / len(zs)


def dft_matrices(height: int, width: int) -> tuple[torch.Tensor, ...]:
    """Real matrices of the orthonormal rFFT along W, the FFT along H and the inverse rFFT along W
    (cos and sin parts), so that the spectral filter is six small matrix products."""
    n, k = torch.arange(width, dtype=torch.float64), torch.arange(width // 2 + 1, dtype=torch.float64)
    angle = 2 * math.pi * n[:, None] * k[None, :] / width  # (W, W/2+1)
    rows = torch.arange(height, dtype=torch.float64)
    angle_h = 2 * math.pi * rows[:, None] * rows[None, :] / height
    twice = torch.full((width // 2 + 1,), 2.0, dtype=torch.float64)  # irfft counts the mirrored half
    twice[0] = 1.0
    if width % 2 == 0:
        twice[-1] = 1.0
    mats = (
        angle.cos() / width**0.5,
        -angle.sin() / width**0.5,
        angle_h.cos() / height**0.5,
        -angle_h.sin() / height**0.5,
        twice[:, None] * angle.T.cos() / width**0.5,
        -twice[:, None] * angle.T.sin() / width**0.5,
    )
    return tuple(m.float() for m in mats)


class GlobalFilter(nn.Module, ExportForm):
    """Frequency branch: rFFT over (H, W), a learnable complex filter per channel and frequency,
    inverse rFFT. The filter starts as identity; maps of another size get it resampled.

    ``dft``: ``fft`` (torch.fft; training) or ``matmul``: the same transform, exact to float
    rounding, as products with DFT matrices, which ONNX Runtime runs several times faster than
    its DFT operator (adkd.deploy.engines.for_export switches to it)."""

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        weight = torch.zeros(channels, height, width // 2 + 1, 2)
        weight[..., 0] = 1.0
        self.weight = nn.Parameter(weight + 0.02 * torch.randn_like(weight))
        self.dft = "fft"
        for name, matrix in zip(("cw", "sw", "ch", "sh", "ia", "ib"), dft_matrices(height, width), strict=True):
            self.register_buffer(name, matrix, persistent=False)

    def use_export_form(self) -> None:
        self.dft = "matmul"

    def _filter_weight(self, size: tuple[int, int]) -> torch.Tensor:
        weight = self.weight
        if weight.shape[1:3] != size:
            weight = F.interpolate(weight.permute(0, 3, 1, 2), size=size, mode="bilinear").permute(0, 2, 3, 1)
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        with torch.autocast(x.device.type, enabled=False):  # cuFFT in half precision wants powers of 2
            x = x.float()
            weight = self._filter_weight((h, w // 2 + 1))
            if self.dft == "fft" or (h, w) != (self.ch.shape[0], self.cw.shape[0]):
                spec = torch.fft.rfft2(x, norm="ortho") * torch.view_as_complex(weight.contiguous())
                return torch.fft.irfft2(spec, s=(h, w), norm="ortho")
            wr, wi = weight[..., 0], weight[..., 1]
            ar, ai = x @ self.cw, x @ self.sw  # rFFT along W
            br, bi = self.ch @ ar - self.sh @ ai, self.ch @ ai + self.sh @ ar  # FFT along H
            yr, yi = br * wr - bi * wi, br * wi + bi * wr  # the filter
            zr, zi = self.ch @ yr + self.sh @ yi, self.ch @ yi - self.sh @ yr  # inverse FFT along H
            return zr @ self.ia + zi @ self.ib  # inverse rFFT along W


class DualDomainBlock(nn.Module):
    """Spatial branch (two 3x3 convs) and frequency branch (global filter, 1x1 conv), fused by a
    1x1 conv over their concatenation and added to the input. ``frequency=False`` (ablation)
    keeps the spatial branch only."""

    def __init__(self, channels: int, height: int, width: int, frequency: bool = True) -> None:
        super().__init__()
        self.spatial = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.frequency = None
        if frequency:
            self.frequency = nn.Sequential(
                GlobalFilter(channels, height, width), nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True)
            )
        branches = 2 if frequency else 1
        self.fuse = nn.Conv2d(branches * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.spatial(x)]
        if self.frequency is not None:
            parts.append(self.frequency(x).to(parts[0].dtype))
        return x + self.fuse(torch.cat(parts, dim=1))


class ScaleStudent(nn.Module):
    """Features of one scale in, the teacher's z of that scale predicted out."""

    def __init__(self, channels: int, height: int, width: int, width_: int, blocks: int, frequency: bool) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.Conv2d(channels, width_, 3, padding=1), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*(DualDomainBlock(width_, height, width, frequency) for _ in range(blocks)))
        self.out = nn.Conv2d(width_, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.inp(x)))


def affinity(x: torch.Tensor, size: int) -> torch.Tensor:
    """Cosine similarity of every position with every other (B, N, N), the map first pooled to at
    most ``size`` x ``size`` positions (N^2 memory)."""
    if max(x.shape[-2:]) > size:
        x = F.adaptive_avg_pool2d(x, size)
    x = F.normalize(x.flatten(2).float(), dim=1)
    return x.transpose(1, 2) @ x


class DHKDNetwork(nn.Module):
    def __init__(
        self,
        backbone: str = "mobilenet_v2",
        layers: list[int] = (1, 2, 3),
        pretrained: bool = True,
        weights: str | None = None,
        image_size: int = 256,
        flow_blocks: int = 4,
        flow_hidden_ratio: float = 1.0,
        flow_clamp: float = 1.9,
        positional: int = 32,
        student_blocks: int = 2,
        student_width: int | None = None,
        frequency: bool = True,
    ) -> None:
        super().__init__()
        self.extractor = FeatureExtractor(backbone, layers, pretrained, weights, frozen=True)
        channels = self.extractor.channels
        sizes = [(image_size // s, image_size // s) for s in self.extractor.strides]
        self.standardize = nn.ModuleList(FeatureStandardizer(c) for c in channels)
        self.teacher = FlowTeacher(channels, sizes, flow_blocks, flow_hidden_ratio, flow_clamp, positional)
        self.student = nn.ModuleList(
            ScaleStudent(c, h, w, student_width or min(c, 512), student_blocks, frequency)
            for c, (h, w) in zip(channels, sizes, strict=True)
        )

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            feats = self.extractor(images)
        return [norm(f) for norm, f in zip(self.standardize, feats, strict=True)]

    def forward(self, images: torch.Tensor, noise_sigma: float = 0.0, teacher_grad: bool = True) -> dict:
        """Teacher z and NLL on the clean features; student predictions from the noised ones."""
        feats = self.features(images)
        with torch.set_grad_enabled(teacher_grad and torch.is_grad_enabled()):
            zs, nll = self.teacher(feats)
        noisy = [f + noise_sigma * torch.randn_like(f) for f in feats] if noise_sigma > 0 else feats
        preds = [student(f) for student, f in zip(self.student, noisy, strict=True)]
        return {"teacher": zs, "student": preds, "nll": nll}

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        out = self(images, teacher_grad=False)
        maps = [squared_distance(z, s) for z, s in zip(out["teacher"], out["student"], strict=True)]
        return combine_scales(maps, images.shape[-2:])
