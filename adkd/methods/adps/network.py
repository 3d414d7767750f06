"""ADPS: asymmetric distillation post-segmentation (Xing, Tang, Tang, Li; TNNLS 2025).

The paper's, with its words: a frozen pretrained teacher sees "the holistic image"; the student is
"given nonoverlapping patches" (k x k, all patches of a batch as one batch), its patch features
stitched back "based on the original position correspondence"; the Weight Mask Block turns the
per-position teacher-student cosine W_i into C_i = (1 - W_i) T_i (Eq. 1-2, nothing learnable); a
UNet-style Post-Segmentation Module ("multiple UpBlock layers of UNet": 2x transposed conv, concat,
two conv-BN-ReLU) decodes C_n..C_1 into a 2-class mask M.

Each reading the text leaves open is a switch (conf/method/adps.yaml), defaulting to the paper's
where the text decides:

- ``student_init``: ``random`` (default). The paper's "W/O.T" variant loses ~10 AP for want of the
  "prior knowledge from the pretrained model", which only the teacher holds: the student is not
  pretrained. ``teacher`` copies the teacher's weights (S = T at step 0).
- ``patch_stages``: which student stages run on patches (0 = stem, 1..4 = the stride-4..32
  stages). Default ``[0, 1]``: Fig. 3 puts the asymmetric input at "the input layers, Stage 1" and
  Table V finds that "performance drops significantly upon further adoption at the deep layers
  (stage 2)". ``null`` = every stage on patches.
- ``wmb``: ``wmb`` (paper), ``diff`` (T - S, the paper's "method 1"), ``concat`` (a
  ``concat_kernel`` x ``concat_kernel`` conv over [T, S], the paper's "method 2": 3x3).
- ``without``: the paper's "W/O.S" (``student``: the PSM segments the frozen teacher's features,
  C_i = T_i) and "W/O.T" (``teacher``: "direct training the student model and PSM", C_i = S_i, no
  distillation).
- ``similarity``: ``cos`` (paper: cosine W and Eq. 7's cosine loss) or ``mse`` (Table VII's
  variant; ours: d = mean over channels of (T - S)^2, W = exp(-d), loss (1 - Y) d + Y max(0, m - d)).
- ``detach`` (ours; the paper is silent): true stops the segmentation loss's gradient at the
  student (C_i built from S_i.detach()), so the student learns from the distillation loss alone.
- ``binary_labels``: Y of Eq. 7 is the binary ground truth at each scale (paper; a position is
  anomalous when at least half of it is), or area-averaged (``false``, ours).

- ``inference_map`` (ours): the map a trained model scores by, ``psm`` (the paper's M) or
  ``coarse`` (the masks 1 - W_i summed over scales, upsampled: what the student's distillation
  gives before the PSM, trained on synthetic anomalies, reads it). Training is the same either
  way. How the two compare on real defects: README.md beside this file.

Ours as well: ``k`` defaults to image_size / 32 (the paper's best, k = 8 at 256 px: 32-px
patches); the PSM widths. The anomaly map is M itself (Algorithm 1) and the image score
max(G(M)): ``map_sigma: 0``, ``score_sigma: 4`` in the method config.
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


class PatchStudent(FeatureExtractor):
    """The student: a trainable extractor whose stages in ``patch_stages`` run on k x k patches,
    each stage's output stitched back "based on the original position correspondence"."""

    def __init__(self, backbone: str, layers: list[int], k: int, patch_stages: list[int] | None = None) -> None:
        self.k = k  # set first: the extractor runs itself once while it is built (to learn its widths)
        self.patch_stages = None if patch_stages is None else set(patch_stages)  # None: every stage
        super().__init__(backbone, layers, pretrained=False, frozen=False)

    def run_stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if self.patch_stages is not None and index not in self.patch_stages:
            return self.stages[index](x)
        return from_patches(self.stages[index](to_patches(x, self.k)), self.k)


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


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


WMB_VARIANTS = ("wmb", "diff", "concat")


class ADPSNetwork(nn.Module):
    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: list[int] = (1, 2, 3),
        pretrained: bool = True,
        weights: str | None = None,
        image_size: int = 256,
        k: int | None = None,
        patch_stages: list[int] | None = (0, 1),
        student_init: str = "random",
        wmb: str = "wmb",
        psm: bool = True,
        psm_widths: list[int] = (32, 64, 128),
        concat_kernel: int = 3,
        without: str | None = None,
        similarity: str = "cos",
        detach: bool = False,
        inference_map: str = "psm",
    ) -> None:
        super().__init__()
        _choose("wmb", wmb, WMB_VARIANTS)
        _choose("inference_map", inference_map, ("psm", "coarse"))
        if inference_map == "coarse" and without is not None:
            raise ValueError(f"inference_map='coarse' needs both teacher and student (without={without!r})")
        self.inference_map = inference_map
        _choose("student_init", student_init, ("teacher", "random"))
        _choose("without", without, (None, "teacher", "student"))
        _choose("similarity", similarity, ("cos", "mse"))
        if without is not None and not psm:
            raise ValueError(f"without={without!r} leaves the PSM as the only detector: it needs psm=true")
        self.teacher = FeatureExtractor(backbone, layers, pretrained, weights, frozen=True)
        self.student = None
        k = k or max(1, image_size // 32)
        if without != "student":
            self.student = PatchStudent(backbone, layers, k, patch_stages)
            if student_init == "teacher":
                self.student.load_state_dict(self.teacher.state_dict())
        self.k, self.wmb, self.without, self.similarity, self.detach = k, wmb, without, similarity, detach
        channels = self.teacher.channels
        if wmb == "concat" and without is None:
            pad = concat_kernel // 2
            self.merge = nn.ModuleList(nn.Conv2d(2 * c, c, concat_kernel, padding=pad) for c in channels)
        self.psm = PostSegmentation(channels, list(psm_widths)) if psm else None

    def weight_mask(self, teacher: list[torch.Tensor], student: list[torch.Tensor]):
        """Per scale: W_i, the teacher-student similarity per position (B,1,h,w), and the PSM input C_i."""
        weights, merged = [], []
        for i, (t, s) in enumerate(zip(teacher, student, strict=True)):
            weights.append(similarity(t, s, self.similarity))
            s_seg = s.detach() if self.detach else s  # the segmentation loss's path into the student
            if self.wmb == "wmb":
                merged.append((1 - similarity(t, s_seg, self.similarity)) * t)
            elif self.wmb == "diff":
                merged.append(t - s_seg)
            else:
                merged.append(self.merge[i](torch.cat([t, s_seg], dim=1)))
        return weights, merged

    def forward(self, images: torch.Tensor) -> dict:
        """Teacher and student features (either None when ablated), the similarities W_i and the
        PSM logits at the input size (None without a PSM)."""
        teacher = student = weights = None
        if self.without != "teacher":
            with torch.no_grad():
                teacher = self.teacher(images)
        if self.student is not None:
            student = self.student(images)
        if self.without is None:
            weights, merged = self.weight_mask(teacher, student)
        else:
            merged = teacher if self.without == "student" else student
        logits = None
        if self.psm is not None:
            logits = F.interpolate(self.psm(merged), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return {"teacher": teacher, "student": student, "weights": weights, "logits": logits}

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        out = self(images)
        if out["logits"] is not None and self.inference_map == "psm":
            return out["logits"].float().softmax(dim=1)[:, 1:]
        size = images.shape[-2:]  # no PSM: the coarse masks 1 - W_i, summed over scales
        up = [F.interpolate(1 - w.float(), size=size, mode="bilinear", align_corners=False) for w in out["weights"]]
        return sum(up)


def similarity(t: torch.Tensor, s: torch.Tensor, kind: str = "cos") -> torch.Tensor:
    """W per position (B,1,h,w): the cosine over channels, or exp(-mean squared difference)."""
    if kind == "cos":
        return F.cosine_similarity(t, s, dim=1).unsqueeze(1)
    return torch.exp(-(t - s).pow(2).mean(1, keepdim=True))


def _choose(name: str, value, allowed: tuple) -> None:  # noqa: ANN001
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
