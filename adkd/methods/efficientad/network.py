"""EfficientAD (Batzner et al., WACV 2024): a frozen patch description network (PDN) as teacher, a
student PDN with twice its channels, and an autoencoder. The student's first half imitates the
teacher (local anomalies), its second half imitates the autoencoder (logical anomalies).

The paper's: the PDN of size S (four convolutions, two 2x2 average poolings, 33 px receptive
field) and M (six convolutions), 384 teacher channels; the autoencoder (six strided convolutions
to a 64-channel code, eight convolutions back with bilinear resizing and dropout 0.2); the maps
(mean over channels of the squared teacher-student and autoencoder-student differences), each
brought to a common scale by its 0.9 and 0.995 quantiles on validation images (0.9 -> 0, 0.995 ->
0.1) and averaged.

The official code's (nelson1425/EfficientAD, as anomalib also builds it): the teacher's outputs are
standardised per channel with the mean and standard deviation over the training images; the
autoencoder's resize targets follow the image size (``H//64 - 1``, ``H//32``, ... and last the
PDN's output size); the combined map, at the PDN's resolution, is padded by 4 zero pixels on each
side when the convolutions are unpadded, then resized bilinearly to the input size; the order of
layers in each PDN (so the official pretrained teacher files load into ``teacher.layers``).

Ours: ImageNet normalisation inside the networks (the official code does it in the data transform,
anomalib inside, as here); the teacher statistics weight every position of every image alike (the
official code averages per-batch means, the same for equal batches); the quantiles are taken on a
fixed-seed sample of at most 2**24 elements (``torch.quantile``'s limit); an image size below 256 px
is refused with a ConfigError.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from adkd.errors import ConfigError
from adkd.methods.components.maps import squared_distance

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
QUANTILE_MAX_ELEMENTS = 2**24  # torch.quantile refuses larger inputs


class ImageNetNormalize(nn.Module):
    """(x - mean) / std with ImageNet's statistics; non-persistent buffers, so no state dict entry."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def sample_elements(
    x: torch.Tensor, limit: int = QUANTILE_MAX_ELEMENTS, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``x`` flattened; a random subset of ``limit`` of its elements (without replacement) if it
    has more. ``generator`` is a CPU generator (the permutation is drawn on the CPU then)."""
    flat = x.reshape(-1)
    if flat.numel() <= limit:
        return flat
    if generator is None:
        idx = torch.randperm(flat.numel(), device=flat.device)[:limit]
    else:
        idx = torch.randperm(flat.numel(), generator=generator)[:limit].to(flat.device)
    return flat[idx]


class PatchDescriptionNetwork(nn.Module):
    """PDN: images in [0, 1] (B,3,H,W) -> (B,out_channels,h,w); h = ceil(H/4) - 8 unpadded (56 at
    256 px), ceil(H/4) padded."""

    def __init__(self, size: str = "s", out_channels: int = 384, padding: bool = False) -> None:
        super().__init__()
        p = 1 if padding else 0
        if size == "s":
            layers = [
                nn.Conv2d(3, 128, 4, padding=3 * p),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2, 2, padding=p),
                nn.Conv2d(128, 256, 4, padding=3 * p),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2, 2, padding=p),
                nn.Conv2d(256, 256, 3, padding=p),
                nn.ReLU(inplace=True),
                nn.Conv2d(256, out_channels, 4),
            ]
        elif size == "m":
            layers = [
                nn.Conv2d(3, 256, 4, padding=3 * p),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2, 2, padding=p),
                nn.Conv2d(256, 512, 4, padding=3 * p),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2, 2, padding=p),
                nn.Conv2d(512, 512, 1),
                nn.ReLU(inplace=True),
                nn.Conv2d(512, 512, 3, padding=p),
                nn.ReLU(inplace=True),
                nn.Conv2d(512, out_channels, 4),
                nn.ReLU(inplace=True),
                nn.Conv2d(out_channels, out_channels, 1),
            ]
        else:
            raise ConfigError(f"EfficientAD's PDN size must be 's' or 'm', got {size!r}")
        self.normalize = ImageNetNormalize()
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(self.normalize(images))


def pdn_output_size(size: int, padding: bool) -> int:
    """The PDN's output side for an input side ``size`` (the official code's formula)."""
    return math.ceil(size / 4) if padding else math.ceil(size / 4) - 8


class AutoEncoder(nn.Module):
    """Images in [0, 1] (B,3,H,W) -> (B,out_channels,h,w) at the PDN's output size. The encoder's
    last 8x8 convolution needs a 8x8 map after five halvings: H and W of at least 256 px."""

    def __init__(self, out_channels: int = 384, padding: bool = False) -> None:
        super().__init__()
        self.padding = padding
        self.normalize = ImageNetNormalize()
        enc = [(3, 32), (32, 32), (32, 64), (64, 64), (64, 64)]
        encoder: list[nn.Module] = []
        for c_in, c_out in enc:
            encoder += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*encoder, nn.Conv2d(64, 64, 8))
        self.up = nn.ModuleList(
            nn.Sequential(nn.Conv2d(64, 64, 4, padding=2), nn.ReLU(inplace=True), nn.Dropout(0.2)) for _ in range(6)
        )
        self.head = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(64, out_channels, 3, padding=1)
        )

    def resize_targets(self, h: int, w: int) -> list[tuple[int, int]]:
        """Sizes of the seven bilinear resizes, for an (h, w) input (official)."""
        sides = [
            lambda s: s // 64 - 1,
            lambda s: s // 32,
            lambda s: s // 16 - 1,
            lambda s: s // 8,
            lambda s: s // 4 - 1,
            lambda s: s // 2 - 1,
            lambda s: pdn_output_size(s, self.padding),
        ]
        return [(f(h), f(w)) for f in sides]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.encoder(self.normalize(images))
        targets = self.resize_targets(*images.shape[-2:])
        for block, size in zip(self.up, targets[:-1], strict=True):
            x = block(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        return self.head(F.interpolate(x, size=targets[-1], mode="bilinear", align_corners=False))


def _scaled(m: torch.Tensor, qa: torch.Tensor, qb: torch.Tensor) -> torch.Tensor:
    """0.1 (m - qa) / (qb - qa) where the quantiles are set, ``m`` where they are NaN (a select,
    not a branch: the dynamo ONNX export keeps it)."""
    unset = torch.isnan(qa) | torch.isnan(qb)
    return torch.where(unset, m, 0.1 * (m - qa) / (qb - qa))


class EfficientADNetwork(nn.Module):
    """Teacher, student and autoencoder; the teacher statistics and map quantiles as buffers (so
    they travel in checkpoints and exports). Before ``set_teacher_statistics`` the teacher's
    outputs are used as they are (mean 0, std 1); before ``set_map_quantiles`` the maps are raw."""

    # The PDN alone works from 64 px (it sees 33 px patches: 8x8 outputs at 64 px, a few pixels or
    # nothing below), but the autoencoder's encoder ends in an 8x8 convolution on the image halved
    # five times, which needs H and W >= 256 (the official code and anomalib fail below as well).
    min_image_size = 256

    def __init__(
        self, size: str = "s", out_channels: int = 384, padding: bool = False, image_size: int | None = 256
    ) -> None:
        super().__init__()
        if image_size is not None and image_size < self.min_image_size:
            raise ConfigError(
                f"EfficientAD needs image_size >= {self.min_image_size} (its autoencoder's encoder reduces "
                f"the image 32-fold, then applies an 8x8 convolution); got image_size={image_size}. Add "
                f"image_size=256 (the paper's) to the command: python -m adkd.run method=efficientad image_size=256"
            )
        self.out_channels = out_channels
        self.padding = padding
        self.teacher = PatchDescriptionNetwork(size, out_channels, padding).eval()
        self.teacher.requires_grad_(False)
        self.student = PatchDescriptionNetwork(size, 2 * out_channels, padding)
        self.ae = AutoEncoder(out_channels, padding)
        self.register_buffer("teacher_mean", torch.zeros(1, out_channels, 1, 1))
        self.register_buffer("teacher_std", torch.ones(1, out_channels, 1, 1))
        for name in ("q_st_a", "q_st_b", "q_ae_a", "q_ae_b"):
            self.register_buffer(name, torch.tensor(float("nan")))

    def train(self, mode: bool = True) -> EfficientADNetwork:
        super().train(mode)
        self.teacher.eval()  # frozen, always
        return self

    def teacher_features(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's outputs, standardised per channel; no gradient."""
        with torch.no_grad():
            return (self.teacher(images) - self.teacher_mean) / self.teacher_std

    def forward(
        self, images: torch.Tensor, augmented: torch.Tensor | None = None, penalty: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Training outputs. ``images``: the training images; ``augmented``: the same images with the
        official colour augmentation, for the autoencoder; ``penalty``: ImageNet-like images for the
        student's penalty. Keys: ``teacher`` (standardised), ``student`` (all 2C channels); with
        ``augmented``: ``teacher_aug``, ``ae_aug``, ``student_aug`` (the student's last C channels);
        with ``penalty``: ``student_penalty`` (all 2C channels)."""
        out = {"teacher": self.teacher_features(images), "student": self.student(images)}
        if augmented is not None:
            out["teacher_aug"] = self.teacher_features(augmented)
            out["ae_aug"] = self.ae(augmented)
            out["student_aug"] = self.student(augmented)[:, self.out_channels :]
        if penalty is not None:
            out["student_penalty"] = self.student(penalty)
        return out

    def raw_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The student-teacher and autoencoder-student maps (B,1,h,w) at the PDN's resolution,
        before any quantile scaling (what ``set_map_quantiles`` takes), in float32."""
        student = self.student(images)
        c = self.out_channels
        st = squared_distance(self.teacher_features(images), student[:, :c])
        ae = squared_distance(self.ae(images), student[:, c:])
        return st, ae

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B,1,H,W): 0.5 st + 0.5 ae, each scaled by its quantiles, zero-padded by 4 px when the
        convolutions are unpadded, resized bilinearly to the input size (official)."""
        st, ae = self.raw_maps(images)
        m = 0.5 * _scaled(st, self.q_st_a, self.q_st_b) + 0.5 * _scaled(ae, self.q_ae_a, self.q_ae_b)
        if not self.padding:
            m = F.pad(m, (4, 4, 4, 4))
        return F.interpolate(m, size=images.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def set_teacher_statistics(self, batches: Iterable[torch.Tensor]) -> None:
        """Per-channel mean of the teacher's outputs over all positions of all ``batches`` (image
        tensors in [0, 1]), then the standard deviation as the root of the mean squared deviation
        from it (two passes, official). A one-shot iterator is kept in a list for the second pass."""
        if isinstance(batches, Iterator):
            batches = list(batches)
        device = self.teacher_mean.device
        total = torch.zeros(self.out_channels, dtype=torch.float64, device=device)
        count = 0
        for images in batches:
            t = self.teacher(images.to(device)).double()
            total += t.sum(dim=(0, 2, 3))
            count += t.numel() // t.shape[1]
        if count == 0:
            raise ValueError("set_teacher_statistics was given no images")
        mean = (total / count).view(1, -1, 1, 1)
        squares = torch.zeros_like(total)
        for images in batches:
            squares += (self.teacher(images.to(device)).double() - mean).pow(2).sum(dim=(0, 2, 3))
        self.teacher_mean.copy_(mean)
        self.teacher_std.copy_((squares / count).sqrt().view(1, -1, 1, 1))

    @torch.no_grad()
    def set_map_quantiles(
        self, st_maps: torch.Tensor | list[torch.Tensor], ae_maps: torch.Tensor | list[torch.Tensor], seed: int = 0
    ) -> None:
        """The 0.9 and 0.995 quantiles of the raw student-teacher and autoencoder maps (from
        ``raw_maps`` on validation images, all elements), each on a sample of at most 2**24
        elements drawn with a generator seeded by ``seed``."""
        for maps, (qa, qb) in ((st_maps, (self.q_st_a, self.q_st_b)), (ae_maps, (self.q_ae_a, self.q_ae_b))):
            if isinstance(maps, (list, tuple)):
                maps = torch.cat([m.reshape(-1) for m in maps])
            values = sample_elements(maps.float(), generator=torch.Generator().manual_seed(seed))
            q = torch.quantile(values, torch.tensor([0.9, 0.995], device=values.device))
            qa.copy_(q[0])
            qb.copy_(q[1])
