"""PatchCore (Roth et al., CVPR 2022), the memory-bank reference the KD papers' tables compare with.

The paper's: a frozen ImageNet backbone; mid-level features (WRN-50-2 layers 2 and 3) averaged
over each position's 3x3 neighbourhood ("locally aware patch features"), the deeper map upsampled
to the shallower one and concatenated; a memory bank of the training images' patch features,
thinned by greedy k-center coreset selection (anomalib's ``KCenterGreedy``, 10% by default); a
test patch's score is its distance to the nearest memory entry.

Ours: the image score is the max of the smoothed map, as for every adkd method (the paper
re-weights the max by the density around its nearest neighbour); optional ``embedding_dim``
reduces the concatenated channels by adaptive average pooling, as the paper's reference code does
for WRN-50-2 (1536 -> 1024); nearest neighbours by exact matrix products (no faiss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adkd.backbones import FeatureExtractor
from adkd.methods.components.maps import combine_scales


class PatchCoreNetwork(nn.Module):
    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: list[int] = (2, 3),
        pretrained: bool = True,
        weights: str | None = None,
        neighbourhood: int = 3,
        embedding_dim: int | None = None,
        chunk: int = 4096,
    ) -> None:
        super().__init__()
        self.extractor = FeatureExtractor(backbone, layers, pretrained, weights, frozen=True)
        self.neighbourhood, self.embedding_dim, self.chunk = neighbourhood, embedding_dim, chunk
        width = sum(self.extractor.channels)
        self.dim = min(width, embedding_dim) if embedding_dim else width
        self.register_buffer("memory_bank", torch.empty(0, self.dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Locally aware patch features (B, D, h, w) at the shallowest tapped scale."""
        with torch.no_grad():
            feats = self.extractor(images)
        size = feats[0].shape[-2:]
        pad = self.neighbourhood // 2
        # As both references pool (the authors' unfold with zero padding, anomalib's AvgPool2d(3, 1, 1)):
        # the zeros beyond the border count, so border patches are scaled down by their share of real
        # neighbours (4/9 in a corner, 6/9 on an edge).
        pooled = [F.avg_pool2d(f.float(), self.neighbourhood, stride=1, padding=pad) for f in feats]
        x = torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in pooled], dim=1)
        if self.dim < x.shape[1]:  # average neighbouring channels down to embedding_dim
            b, c, h, w = x.shape
            x = F.adaptive_avg_pool1d(x.permute(0, 2, 3, 1).reshape(-1, 1, c), self.dim)
            x = x.reshape(b, h, w, self.dim).permute(0, 3, 1, 2)
        return x

    @staticmethod
    def flatten(features: torch.Tensor) -> torch.Tensor:
        return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])

    def nearest_distance(self, patches: torch.Tensor) -> torch.Tensor:
        """Euclidean distance of each row of ``patches`` (N, D) to its nearest memory entry, in
        chunks of the bank: |x|^2 - 2 x.m + |m|^2 by matrix products (exports to ONNX as is)."""
        if len(self.memory_bank) == 0:
            raise RuntimeError("PatchCore's memory bank is empty: train (one pass over the training images) first.")
        x2 = patches.pow(2).sum(1, keepdim=True)
        best = None
        for start in range(0, len(self.memory_bank), self.chunk):
            bank = self.memory_bank[start : start + self.chunk]
            d2 = x2 - 2 * patches @ bank.T + bank.pow(2).sum(1)[None]
            low = d2.amin(1)
            best = low if best is None else torch.minimum(best, low)
        return best.clamp_min(0).sqrt()

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        features = self(images)
        b, _, h, w = features.shape
        scores = self.nearest_distance(self.flatten(features)).reshape(b, 1, h, w)
        return combine_scales([scores], images.shape[-2:])

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        bank = state_dict.get(prefix + "memory_bank")
        if bank is not None:  # the bank's size is the checkpoint's
            self.memory_bank = torch.empty_like(bank, device=self.memory_bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
