"""DRAEM's losses: the reconstruction's L2 and SSIM against the clean image, focal on the mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ssim_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - mean SSIM over pixels and channels (the official code's SSIM loss).

    Written here because kornia's ``ssim_loss`` pads by reflection and halves the loss (anomalib
    doubles it back); the padding changes the border pixels."""
    return 1 - ssim_map(x, y).mean()


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM per pixel and channel as the official code computes it: an 11x11 Gaussian window
    (sigma 1.5) with zero padding, C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 1 for images in
    [0, 1] (the official code derives L from the image's range: 1 for such images)."""
    coords = torch.arange(window, dtype=x.dtype, device=x.device) - window // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(x.shape[1], 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, padding=window // 2, groups=x.shape[1])

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
