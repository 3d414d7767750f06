"""ADPS: asymmetric distillation post-segmentation (Xing, Tang, Tang, Li; TNNLS 2025).

The paper's: a frozen pretrained teacher sees the whole image; the student sees the same image
cut into k x k patches (all patches as one batch), its patch features stitched back in place;
the Weight Mask Block turns the per-position teacher-student cosine W_i into C_i = (1 - W_i) T_i;
a UNet-style Post-Segmentation Module decodes C_n..C_1 (coarse to fine: 2x transposed conv,
concat, two conv-BN-ReLU) into a 2-class mask M.

Ours (the paper is silent): the student is the teacher's architecture, started from the
teacher's weights (``student_init: teacher``) or from scratch (``random``); ``k`` defaults to
image_size / 32 (the paper's best, k = 8 at 256 px: 32-px patches); ``patch_stages`` says which
student stages run on patches (default: all, i.e. split at the input and stitched only where
features are tapped; ``[0]`` = only the stem on patches, ``[0, 1]`` = re-split at stage 1 too);
the PSM widths; the WMB variants ``diff`` (T - S) and ``concat`` (1x1 conv over [T, S]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adkd.backbones import FeatureExtractor


def to_patches(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, C, H, W) -> (B*k*k, C, H/k, W/k), patches in row-major order per image."""
    b, c, h, w = x.shape
    if h % k or w % k:
        raise ValueError(f"A {h}x{w} map does not split into {k}x{k} patches")
    x = x.reshape(b, c, k, h // k, k, w // k).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * k * k, c, h // k, w // k)


def from_patches(x: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`to_patches`."""
    n, c, ph, pw = x.shape
    b = n // (k * k)
    x = x.reshape(b, k, k, c, ph, pw).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, k * ph, k * pw)


class PatchStudent(nn.Module):
    """The student: backbone stages run on k x k patches (those in ``patch_stages``) or on the
    stitched map, returning the stitched outputs of the tapped stages."""

    def __init__(self, extractor: FeatureExtractor, k: int, patch_stages: list[int] | None = None) -> None:
        super().__init__()
        self.stages = extractor.stages
        self.register_buffer("mean", extractor.mean.clone(), persistent=False)
        self.register_buffer("std", extractor.std.clone(), persistent=False)
        self.layers = extractor.layers
        self.k = k
        self.patch_stages = set(range(len(self.stages)) if patch_stages is None else patch_stages)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        feats, x, patched = [], (images - self.mean) / self.std, False
        for i, stage in enumerate(self.stages):
            if (i in self.patch_stages) != patched:
                x = to_patches(x, self.k) if not patched else from_patches(x, self.k)
                patched = not patched
            x = stage(x)
            if i in self.layers:
                feats.append(from_patches(x, self.k) if patched else x)
        return feats


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )  # fmt: skip


class PostSegmentation(nn.Module):
    """UNet-style decoder over C_1..C_n, coarse to fine, ending in 2-class logits."""

    def __init__(self, channels: list[int], widths: list[int]) -> None:
        super().__init__()
        if len(widths) != len(channels):
            raise ValueError(f"psm_widths needs one width per tapped scale ({len(channels)}), got {widths}")
        self.deepest = conv_block(channels[-1], widths[-1])
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for i in range(len(channels) - 2, -1, -1):
            self.up.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
            self.fuse.append(conv_block(widths[i] + channels[i], widths[i]))
        self.head = nn.Conv2d(widths[0], 2, 3, padding=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.deepest(feats[-1])
        for up, fuse, skip in zip(self.up, self.fuse, reversed(feats[:-1]), strict=True):
            x = fuse(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class ADPSNetwork(nn.Module):
    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: list[int] = (1, 2, 3),
        pretrained: bool = True,
        weights: str | None = None,
        k: int = 8,
        patch_stages: list[int] | None = None,
        student_init: str = "teacher",
        wmb: str = "wmb",
        psm: bool = True,
        psm_widths: list[int] = (32, 64, 128),
    ) -> None:
        super().__init__()
        if wmb not in ("wmb", "diff", "concat"):
            raise ValueError(f"wmb must be 'wmb', 'diff' or 'concat', got {wmb!r}")
        if student_init not in ("teacher", "random"):
            raise ValueError(f"student_init must be 'teacher' or 'random', got {student_init!r}")
        self.teacher = FeatureExtractor(backbone, layers, pretrained, weights, frozen=True)
        student = FeatureExtractor(backbone, layers, pretrained=False, frozen=False)
        if student_init == "teacher":
            student.load_state_dict(self.teacher.state_dict())
        self.student = PatchStudent(student, k, patch_stages)
        self.k = k
        self.wmb = wmb
        channels = self.teacher.channels
        if wmb == "concat":
            self.merge = nn.ModuleList(nn.Conv2d(2 * c, c, 1) for c in channels)
        self.psm = PostSegmentation(channels, list(psm_widths)) if psm else None

    def weight_mask(self, teacher: list[torch.Tensor], student: list[torch.Tensor]):
        """Per scale: W_i = cos(T_i, S_i) over channels (B,1,h,w) and the PSM input C_i."""
        cos, merged = [], []
        for i, (t, s) in enumerate(zip(teacher, student, strict=True)):
            w = F.cosine_similarity(t, s, dim=1).unsqueeze(1)
            cos.append(w)
            if self.wmb == "wmb":
                merged.append((1 - w) * t)
            elif self.wmb == "diff":
                merged.append(t - s)
            else:
                merged.append(self.merge[i](torch.cat([t, s], dim=1)))
        return cos, merged

    def forward(self, images: torch.Tensor) -> dict:
        """Teacher and student features, cosines W_i and the PSM logits at the input size (or None)."""
        with torch.no_grad():
            teacher = self.teacher(images)
        student = self.student(images)
        cos, merged = self.weight_mask(teacher, student)
        logits = None
        if self.psm is not None:
            logits = F.interpolate(self.psm(merged), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return {"teacher": teacher, "student": student, "cos": cos, "logits": logits}

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        out = self(images)
        if out["logits"] is not None:
            return out["logits"].float().softmax(dim=1)[:, 1:]
        size = images.shape[-2:]  # no PSM: the coarse masks 1 - W_i, summed over scales
        return sum(F.interpolate(1 - w.float(), size=size, mode="bilinear", align_corners=False) for w in out["cos"])
