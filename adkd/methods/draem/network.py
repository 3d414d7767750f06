"""DRAEM's two networks (Zavrtanik et al., ICCV 2021): a reconstructive autoencoder and a
discriminative U-Net on [image, reconstruction].

Layout as the official code builds it (and anomalib's port; a test pins the parameter count to
anomalib's ``DraemModel``): every block is two 3x3 convolutions with BatchNorm and ReLU; the
autoencoder (width 128) halves the resolution four times and has no skip connections; the U-Net
(width 64) halves it five times and concatenates each encoder block into the decoder. Both take
the images as they are in [0, 1] (no ImageNet normalisation: no pretrained part), and start from
the official code's initial weights (:func:`official_init`).
"""

from __future__ import annotations

import torch
from torch import nn

from adkd.errors import ConfigError


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _block(c_in: int, c_out: int, c_mid: int | None = None) -> nn.Sequential:
    """conv-BN-ReLU twice (c_in -> c_mid -> c_out)."""
    c_mid = c_out if c_mid is None else c_mid
    return nn.Sequential(*_conv(c_in, c_mid), *_conv(c_mid, c_out))


def _up(c_in: int, c_out: int) -> nn.Sequential:
    """x2 bilinear upsampling, then conv-BN-ReLU."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), *_conv(c_in, c_out))


def official_init(module: nn.Module) -> None:
    """The official code's ``weights_init``: convolution weights ~ N(0, 0.02) (their biases keep
    PyTorch's default), BatchNorm scales ~ N(1, 0.02) and shifts 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Reconstructive(nn.Module):
    """Encoder widths w, 2w, 4w, 8w, 8w (max-pooled between blocks) and a mirrored decoder."""

    def __init__(self, channels: int = 3, width: int = 128) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        encoder, c_in = [], channels
        for i, w in enumerate(widths):
            encoder += ([nn.MaxPool2d(2)] if i else []) + [_block(c_in, w)]
            c_in = w
        self.encoder = nn.Sequential(*encoder)
        decoder = []
        for c_in, c_out in ((8 * width, 4 * width), (4 * width, 2 * width), (2 * width, width), (width, width)):
            decoder += [_up(c_in, c_in), _block(c_in, c_out, c_mid=c_in)]
        self.decoder = nn.Sequential(*decoder, nn.Conv2d(width, channels, 3, padding=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images))


class Discriminative(nn.Module):
    """U-Net: encoder widths w, 2w, 4w, 8w, 8w, 8w; each decoder stage upsamples, concatenates the
    encoder block of its resolution and applies a block; 2-class logits at the input size."""

    def __init__(self, channels: int = 6, width: int = 64, classes: int = 2) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width, 8 * width, 8 * width]
        self.encoder = nn.ModuleList()
        c_in = channels
        for w in widths:
            self.encoder.append(_block(c_in, w))
            c_in = w
        self.pool = nn.MaxPool2d(2)
        self.up, self.fuse = nn.ModuleList(), nn.ModuleList()
        for skip, c_out in zip(reversed(widths[:-1]), (8 * width, 4 * width, 2 * width, width, width), strict=True):
            self.up.append(_up(c_in, c_out))
            self.fuse.append(_block(c_out + skip, c_out))
            c_in = c_out
        self.head = nn.Conv2d(width, classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(self.pool(x) if i else x)
            skips.append(x)
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips[:-1]), strict=True):
            x = fuse(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class DRAEMNetwork(nn.Module):
    # The autoencoder's bottleneck is 1/16 of the image: at 32 px it is 2 x 2, every position of it
    # sees the whole image, and a defect anywhere changes the whole reconstruction (measured on the
    # 32 px test images: the reconstruction error of an image with a square is 100 times a normal one's,
    # everywhere). 64 px leaves a 4 x 4 bottleneck.
    min_image_size = 64

    def __init__(
        self, reconstructive_width: int = 128, discriminative_width: int = 64, image_size: int | None = None
    ) -> None:
        super().__init__()
        if image_size is not None and image_size < self.min_image_size:
            raise ConfigError(
                f"image_size={image_size} is too small for DRAEM: its autoencoder needs "
                f"image_size >= {self.min_image_size} (the paper's is 256)."
            )
        self.reconstructive = Reconstructive(3, reconstructive_width)
        self.discriminative = Discriminative(6, discriminative_width)
        self.apply(official_init)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction (B,3,H,W), 2-class logits (B,2,H,W))."""
        reconstruction = self.reconstructive(images)
        return reconstruction, self.discriminative(torch.cat([images, reconstruction], dim=1))

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        """The anomaly class's softmax probability (B,1,H,W)."""
        _, logits = self(images)
        return logits.float().softmax(dim=1)[:, 1:]
