"""Distil an EfficientAD teacher (a PDN) from any adkd backbone's features, offline.

    adkd distill --backbone mobilenet_v2 --out teacher_s.pth \\
        [--images <folder>] [--size s|m] [--steps N] [--batch-size B]

then train with ``method.teacher_weights=teacher_s.pth``.

As the official pretraining does it (nelson1425/EfficientAD, ``pretraining.py``; the paper's
teacher: WideResNet-101 on ImageNet, 60,000 steps at batch 16): the backbone sees the image at twice
the PDN's size; its stride-8 and stride-16 features (adkd's ``layers: [2, 3]``: WRN's layer2 and
layer3) are each unfolded into 3x3 neighbourhoods, brought to the stride-8 grid bilinearly, each
averaged down to 1024 values (``adaptive_avg_pool1d``, PatchCore's projection), and the two then
averaged down to the PDN's 384 channels; the targets are standardised per channel (mean and
standard deviation over the first batches); the PDN, with padding (its output on the same grid),
learns them by mean squared error, Adam lr 1e-4, weight decay 1e-5; images turn grey with
probability 0.1.

Ours: any adkd backbone (the one whose ImageNet weights ship offline is mobilenet_v2: 32 + 96
channels at those strides, 3x3 neighbourhoods of 288 and 864 values, each spread to 1024 by the same
pooling); the images are a folder (``--images``, searched recursively: ImageNet's train/, ELPV's
cells, anything) or by default the natural images that ship with scikit-image (16 of them, so each
step takes a random crop of a quarter to all of an image, flipped or not); the statistics over
``--stat-batches`` batches (official: 10,000 images). The file holds the PDN's state dict (plain
tensors, in the network's order) and what made it.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from adkd.backbones.extractor import FeatureExtractor
from adkd.errors import UserError
from adkd.methods.efficientad.images import endless, image_files, image_folder
from adkd.methods.efficientad.network import PatchDescriptionNetwork

log = logging.getLogger(__name__)

PROJECTION_DIM = 1024  # official: each layer's neighbourhoods averaged down to 1024 values first


class FeatureTargets(nn.Module):
    """A frozen backbone's features as the PDN's targets: (B,3,2H,2W) images in [0, 1] ->
    (B, out_channels, H/4, W/4), before standardisation."""

    def __init__(
        self,
        backbone: str,
        out_channels: int = 384,
        layers: tuple[int, ...] = (2, 3),
        pretrained: bool = True,
        weights: str | None = None,
    ) -> None:
        super().__init__()

        self.extractor = FeatureExtractor(backbone, layers, pretrained=pretrained, weights=weights, frozen=True)
        self.out_channels = out_channels

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.extractor(images)
        h, w = features[0].shape[-2:]
        pooled = []
        for f in features:
            b, c = f.shape[:2]
            patches = F.unfold(f, kernel_size=3, padding=1).view(b, c * 9, *f.shape[-2:])
            patches = F.interpolate(patches, size=(h, w), mode="bilinear", align_corners=False)
            flat = patches.permute(0, 2, 3, 1).reshape(b * h * w, 1, c * 9)
            pooled.append(F.adaptive_avg_pool1d(flat, PROJECTION_DIM))
        joined = torch.cat(pooled, dim=2)  # (B*h*w, 1, layers x 1024)
        target = F.adaptive_avg_pool1d(joined, self.out_channels).view(-1, h, w, self.out_channels)
        return target.permute(0, 3, 1, 2).contiguous()


class DistillationImages(torch.utils.data.Dataset):
    """Random crops of the images: (the backbone's view at 2 x size, the PDN's at size), in [0, 1]."""

    def __init__(self, files: list[Path], size: int, grey: float = 0.1) -> None:
        from torchvision.transforms import v2

        self.files, self.size = files, size
        self.crop = v2.Compose(
            [
                v2.ToImage(),
                v2.RandomResizedCrop(2 * size, scale=(0.25, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.RandomGrayscale(grey),
                v2.ToDtype(torch.float32, scale=True),
            ]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        with Image.open(self.files[index]) as image:
            large = self.crop(image.convert("RGB"))
        small = F.interpolate(large[None], size=(self.size, self.size), mode="bilinear", antialias=True)[0]
        return large, small


def distil(
    backbone: str,
    files: list[Path],
    size: str = "s",
    steps: int = 300,
    batch_size: int = 4,
    image_size: int = 128,
    out_channels: int = 384,
    stat_batches: int = 8,
    lr: float = 1e-4,
    seed: int = 0,
    pretrained: bool = True,
    weights: str | None = None,
) -> tuple[nn.Module, dict]:
    """A PDN of ``size`` trained for ``steps`` to predict ``backbone``'s standardised features;
    returns it and what made it (backbone, steps, the last loss, ...)."""
    torch.manual_seed(seed)
    targets = FeatureTargets(backbone, out_channels, pretrained=pretrained, weights=weights).eval()
    pdn = PatchDescriptionNetwork(size, out_channels, padding=True).train()
    loader = torch.utils.data.DataLoader(
        DistillationImages(files, image_size), batch_size=batch_size, shuffle=True, drop_last=len(files) > batch_size
    )
    batches = endless(loader)
    with torch.no_grad():  # per-channel statistics of the targets (two passes over the same batches)
        seen = [targets(next(batches)[0]) for _ in range(stat_batches)]
        mean = torch.cat([t.transpose(0, 1).reshape(out_channels, -1) for t in seen], 1).mean(1).view(1, -1, 1, 1)
        std = torch.cat([(t - mean).transpose(0, 1).reshape(out_channels, -1) for t in seen], 1).pow(2).mean(1)
        std = std.sqrt().clamp_min(1e-6).view(1, -1, 1, 1)
        del seen
    optimizer = torch.optim.Adam(pdn.parameters(), lr=lr, weight_decay=1e-5)
    start, losses = time.monotonic(), []
    for step in range(1, steps + 1):
        large, small = next(batches)
        target = (targets(large) - mean) / std
        loss = (pdn(small) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step == 1 or step % 50 == 0 or step == steps:
            log.info("step %d/%d: loss %.4f (%.1f s)", step, steps, losses[-1], time.monotonic() - start)
    tail = losses[-min(len(losses), 20) :]
    made = {
        "backbone": backbone,
        "size": size,
        "out_channels": out_channels,
        "steps": steps,
        "batch_size": batch_size,
        "image_size": image_size,
        "images": len(files),
        "seed": seed,
        "first_loss": losses[0],
        "last_loss": sum(tail) / len(tail),
        "seconds": time.monotonic() - start,
    }
    return pdn.eval(), made


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        folder = image_folder(args.images, "distillation images", "--images")
        if folder is None:
            raise UserError("--images: give a folder of images or 'bundled'.")
        files = image_files(folder)
        pdn, made = distil(
            args.backbone,
            files,
            args.size,
            args.steps,
            args.batch_size,
            args.image_size,
            stat_batches=args.stat_batches,
            lr=args.lr,
            seed=args.seed,
            pretrained=not args.random_backbone,
            weights=args.weights,
        )
    except UserError as err:
        print(f"error: {err}")
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": pdn.state_dict(), **made}, args.out)
    print(
        f"Wrote {args.out}: PDN-{args.size.upper()} distilled from {args.backbone} on {len(files)} images, "
        f"{args.steps} steps in {made['seconds']:.0f} s, loss {made['first_loss']:.3f} -> {made['last_loss']:.3f}. "
        f"Train with method.teacher_weights={args.out}"
    )
    return 0


if __name__ == "__main__":  # the command of earlier versions
    from adkd.moved import forward

    forward("adkd.methods.efficientad.distill", "distill")
