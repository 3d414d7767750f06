"""RD++'s losses on the projection layer, beside RD4AD's distillation loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def projection_loss(
    teacher_noisy: list[torch.Tensor],
    projected: list[torch.Tensor],
    projected_noisy: list[torch.Tensor],
    reconstruction_weight: float = 0.01,
    contrast_weight: float = 0.1,
    contrast_margin: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Summed over scales, as the official code computes them:

    - reconstruction: the mean over positions of 1 - cos (over channels) between the projections
      of the noisy and of the clean image's features (both sides trained);
    - contrast: per sample, max(0, cos - margin) between the teacher's raw features of the noisy
      image and the projection of the clean one, each flattened (torch's CosineEmbeddingLoss with
      target -1).

    The official code also adds a Sinkhorn divergence (``geomloss``) between the batch's projected
    clean features and the same features in a shuffled batch order; that is one point set against
    itself, whose debiased divergence is zero whatever the weights, so it is left out here. Its
    total (ssot + w_r recon + w_c contrast) / (1 + w_r + w_c) keeps the official normalisation."""
    recon = contrast = 0
    for t_noisy, p, p_noisy in zip(teacher_noisy, projected, projected_noisy, strict=True):
        recon = recon + (1 - F.cosine_similarity(p_noisy, p, dim=1)).mean()
        cos = F.cosine_similarity(t_noisy.flatten(1), p.flatten(1), dim=1)
        contrast = contrast + F.relu(cos - contrast_margin).mean()
    total = (reconstruction_weight * recon + contrast_weight * contrast) / (1 + reconstruction_weight + contrast_weight)
    return {"reconstruction": recon, "contrast": contrast, "projection": total}


def simplex_like_noise(
    images: torch.Tensor,
    size: tuple[int, int] = (10, 32),
    scale: float = 0.2,
    octaves: int = 6,
    persistence: float = 0.6,
    period: float = 32.0,
) -> torch.Tensor:
    """Each image with one patch of smooth multi-octave noise added (RD++'s "simplex noise"):
    a patch of random side in [size[0], size[1]) px at a random place, ``scale`` x noise added in
    [0, 1] pixel space without clipping, as the official code does (at 256 px; here the patch side
    scales with the image: side x H / 256). The official noise is 3-D simplex noise (6 octaves,
    persistence 0.6, base period 32 px); ours is value noise with the same octaves, persistence
    and period (random values on a grid of that period, bicubically interpolated): the same
    smooth, band-limited kind, from torch's generator (seeded by the run)."""
    out = images.clone()
    b, c, h, w = images.shape
    ratio = h / 256
    for i in range(b):
        ph, pw = (max(2, int(int(torch.randint(*size, (1,))) * ratio)) for _ in range(2))
        y, x = int(torch.randint(0, h - ph + 1, (1,))), int(torch.randint(0, w - pw + 1, (1,)))
        noise = torch.zeros(c, ph, pw, device=images.device)
        for k in range(octaves):
            cell = max(period * ratio / 2**k, 1.0)
            grid = torch.rand(1, c, int(ph / cell) + 2, int(pw / cell) + 2, device=images.device) * 2 - 1
            up = F.interpolate(grid, scale_factor=cell, mode="bicubic", align_corners=False)
            noise += persistence**k * up[0, :, :ph, :pw]
        out[i, :, y : y + ph, x : x + pw] += scale * noise
    return out
