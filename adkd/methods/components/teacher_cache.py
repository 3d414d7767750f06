"""Frozen-teacher features kept from one epoch to the next.

A frozen teacher (RD4AD's, STFPM's, RD++'s on the clean images, DHKD's extractor, DeSTSeg's and
ADPS's on the images without a synthetic anomaly) gives the same features for the same image every
epoch: computing them again is the largest share of an epoch the student's step does not need
(``make bench-train``). :class:`TeacherCache` keeps each training and validation image's features
the first time the teacher sees it and serves them afterwards.

It never serves stale features. An entry is served only when all of these match what it was
computed from:

- the sample: its ``image_path`` in the batch, and a checksum of the very image tensor the teacher
  is given (two float64 sums over its values, one of them weighted by a fixed random vector), so an
  image with a synthetic anomaly, noise or any augmentation is a miss, computed afresh;
- the image's shape and dtype, and the autocast state (mixed precision gives other features);
- the teacher: the same module, its parameters and buffers the same tensors, unmodified (their
  storage and in-place version counters: loading weights, moving it to another device or memory
  format, or training it empties the cache).

Only images as the dataset gives them are stored (a sample's ``clean`` image where the loader keeps
one, else its image when it carries no synthetic anomaly), never an augmented one. Teachers in
training mode or with trainable parameters are never cached.

Memory: each image's features at full precision (ResNet-18 layers 1-3 at 256 px: 1.8 MB; WRN-50-2:
7.3 MB), on the device the teacher runs on. Before filling, the expected size (one image's features
times the training and validation images) is checked against ``max_gb``: above it nothing is kept
(a log line says so). ``dtype: float16`` halves it; the served features are then rounded (not bit
for bit the teacher's). ``enabled: false`` turns it off (``teacher_cache.enabled=false``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

log = logging.getLogger(__name__)

_DTYPES = {None: None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TeacherCache:
    """``enabled``: keep and serve features; ``max_gb``: the most the kept features may take;
    ``dtype``: null (as computed) or float16/bfloat16 (half the memory, rounded features)."""

    def __init__(self, enabled: bool = True, max_gb: float = 4.0, dtype: str | None = None) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"teacher_cache.dtype must be one of {sorted(k for k in _DTYPES if k)} or null")
        self.enabled, self.max_bytes, self.dtype = enabled, int(max_gb * 2**30), _DTYPES[dtype]
        self.entries: dict[tuple, tuple] = {}  # (teacher fingerprint, path) -> (checksum, features per scale)
        self.bytes = 0
        self.expected = 0  # images the cache may have to hold (set by the module: training + validation)
        self.full = False  # the expected size is past max_bytes: nothing more is stored
        self.hits = self.misses = 0
        self._batch: dict | None = None
        self._weights: dict[tuple, torch.Tensor] = {}

    # -- the training step's context ------------------------------------------------------------
    @contextlib.contextmanager
    def serving(self, network: nn.Module, batch: dict) -> Iterator[None]:
        """Within it, every frozen feature extractor of ``network`` serves ``batch``'s images from the
        cache (batches without ``image_path``: those of other loaders, are computed as usual)."""
        paths = batch.get("image_path") if isinstance(batch, dict) else None
        extractors = [m for m in network.modules() if hasattr(m, "feature_cache") and _frozen(m)]
        if not self.enabled or paths is None or not extractors:
            yield
            return
        self._batch = {"paths": list(paths), "clean": self._clean_checksums(batch)}
        for m in extractors:
            m.feature_cache = self
        try:
            yield
        finally:
            for m in extractors:
                m.feature_cache = None
            self._batch = None

    def _clean_checksums(self, batch: dict) -> list[tuple | None]:
        """Per sample, the checksum of its image as the dataset gives it; None where unknown (a
        synthetic anomaly and no ``clean`` copy): such features are not stored."""
        images = batch["image"]
        if batch.get("synthetic") is None:
            return self.checksums(images)
        if batch.get("clean") is not None:
            return self.checksums(batch["clean"])
        anomalous = batch["gt_mask"].flatten(1).any(dim=1).tolist()
        return [None if a else c for a, c in zip(anomalous, self.checksums(images), strict=True)]

    def checksums(self, images: torch.Tensor) -> list[tuple]:
        """Per image: (shape, dtype, sum, sum weighted by a fixed random vector), float64 sums, each
        image on its own: a reduction over the batch (a matrix product) rounds a row otherwise in
        batches of other sizes, and the same image would miss."""
        flat = images.detach().flatten(1).double()
        key = (flat.shape[1], flat.device)
        if key not in self._weights:
            generator = torch.Generator().manual_seed(0)
            self._weights[key] = torch.rand(flat.shape[1], generator=generator, dtype=torch.float64).to(flat.device)
        weights = self._weights[key]
        sums = torch.stack([torch.stack([row.sum(), torch.dot(row, weights)]) for row in flat]).tolist()
        return [(tuple(images.shape[1:]), images.dtype, *s) for s in sums]

    # -- what the extractor calls ---------------------------------------------------------------
    def features(self, extractor: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
        """``extractor(images)``, each image's features from the cache where it holds them."""
        batch = self._batch
        if batch is None or len(batch["paths"]) != len(images) or torch.is_grad_enabled() and _trainable(extractor):
            return extractor.compute(images)
        teacher = self._fingerprint(extractor)
        if self.entries and next(iter(self.entries))[0] != teacher:
            self.clear()  # another teacher, other weights, device or precision: nothing kept is valid
        sums = self.checksums(images)
        found = [self.entries.get((teacher, p)) for p in batch["paths"]]
        hit = [e is not None and e[0] == s for e, s in zip(found, sums, strict=True)]
        missing = [i for i, h in enumerate(hit) if not h]
        self.hits += len(hit) - len(missing)
        self.misses += len(missing)
        if not missing:
            computed = None
        else:
            computed = extractor.compute(images if len(missing) == len(images) else images[missing])
            picked = [batch["paths"][i] for i in missing], [sums[i] for i in missing]
            self._store(teacher, *picked, [batch["clean"][i] for i in missing], computed)
            if len(missing) == len(images):
                return computed
        rows = {i: r for r, i in enumerate(missing)}
        dtype = found[hit.index(True)][2]  # as the teacher computed them (float16 kept: served as computed)
        return [
            torch.stack([computed[k][rows[i]] if i in rows else found[i][1][k].to(dtype) for i in range(len(images))])
            for k in range(len(found[hit.index(True)][1]))
        ]

    def _store(self, teacher: tuple, paths: list, sums: list, clean: list, feats: list[torch.Tensor]) -> None:
        if self.full:
            return
        each = sum(f[0].numel() * (self.dtype or f.dtype).itemsize for f in feats)
        if not self.entries and each * max(self.expected, len(paths)) > self.max_bytes:
            self.full = True
            log.warning(
                "Teacher cache off: %d images' features would take %.2f GB, over teacher_cache.max_gb=%.2f "
                "(raise it, or teacher_cache.dtype=float16 halves it)",
                self.expected,
                each * self.expected / 2**30,
                self.max_bytes / 2**30,
            )
            return
        for i, (path, s, c) in enumerate(zip(paths, sums, clean, strict=True)):
            if c != s or self.bytes + each > self.max_bytes:
                continue  # an augmented image, or the limit reached (more images than expected)
            old = self.entries.get((teacher, path))
            if old is not None:
                self.bytes -= sum(f.numel() * f.itemsize for f in old[1])
            kept = [f[i].to(self.dtype or f.dtype, copy=True) for f in feats]
            self.entries[(teacher, path)] = (s, kept, feats[0].dtype)
            self.bytes += each

    def _fingerprint(self, extractor: nn.Module) -> tuple:
        """What the features depend on besides the image: the module, its tensors (storage and
        in-place versions) and the autocast state."""
        tensors = [*extractor.parameters(), *extractor.buffers()]
        autocast = tuple((d, torch.get_autocast_dtype(d)) for d in ("cpu", "cuda") if torch.is_autocast_enabled(d))
        return (id(extractor), autocast, tuple((t.data_ptr(), t._version) for t in tensors))

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0
        self.full = False


def _frozen(module: nn.Module) -> bool:
    return not module.training and not _trainable(module)


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())
