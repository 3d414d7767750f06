"""Per-scale anomaly maps: the teacher-student distances every KD method measures at each tapped
scale, and the one way they become a map at the input size (upsampled, then summed or multiplied)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_distance(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """1 - cos(t, s) over channels, per position: (B,C,h,w) pairs -> (B,1,h,w), in float32."""
    return 1 - F.cosine_similarity(t.float(), s.float(), dim=1).unsqueeze(1)


def normalized_distance(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """0.5 |t/|t| - s/|s||^2 per position (STFPM's): equals the cosine distance, as computed by STFPM."""
    return 0.5 * (F.normalize(t.float(), dim=1) - F.normalize(s.float(), dim=1)).pow(2).sum(1, keepdim=True)


def squared_distance(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Mean over channels of (t - s)^2 per position."""
    return (t.float() - s.float()).pow(2).mean(1, keepdim=True)


def combine_scales(
    maps: list[torch.Tensor], size: tuple[int, int], combine: str = "sum", align_corners: bool = False
) -> torch.Tensor:
    """Maps (B,1,h_i,w_i), one per scale, upsampled (bilinear) to ``size`` and summed (``sum``) or
    multiplied (``product``, STFPM's). ``align_corners``: the corner cells' centres at the image's
    corner pixels (RD4AD's and RD++'s official maps) rather than half a cell inside; on a coarse
    scale (8 x 8 cells at 128 px) that moves the map by up to half a cell at the borders."""
    if combine not in ("sum", "product"):
        raise ValueError(f"combine must be 'sum' or 'product', got {combine!r}")
    out = None
    for m in maps:
        m = F.interpolate(m.float(), size=tuple(size), mode="bilinear", align_corners=align_corners)
        out = m if out is None else (out * m if combine == "product" else out + m)
    return out
