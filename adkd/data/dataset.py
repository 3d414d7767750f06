"""The one torch Dataset every datamodule uses: records in, sample dicts out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from adkd.data.records import Record
from adkd.errors import ImageReadError, ImageTooLargeError
from adkd.metrics.spro import MAX_REGIONS, region_saturation


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any mode PIL reads. 16-bit images (industrial cameras write 16-bit PNG and
    TIFF; PIL opens them as I;16 or I) are scaled by 255/65535: PIL's own convert("RGB") clips them
    at 255, which turns almost every pixel white. Float images are taken as [0, 1]."""
    if img.mode.startswith("I") or img.mode == "F":
        full = 1.0 if img.mode == "F" else 65535.0
        array = np.asarray(img).astype(np.float64) / full * 255
        img = Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8))
    return img.convert("RGB")


def read_image(path: Path | BinaryIO, name: str | None = None, max_pixels: int | None = None) -> Image.Image:
    """8-bit RGB, EXIF rotation applied, from a file or a stream (``name``: what errors call it).
    ``max_pixels``: an image whose header declares more (width x height) is refused before any
    pixel is decoded (ImageTooLargeError): what a server takes from anyone."""
    try:
        with Image.open(path) as img:
            if max_pixels is not None and img.size[0] * img.size[1] > max_pixels:
                raise ImageTooLargeError(str(name or path), f"{img.size[0]}x{img.size[1]}", max_pixels)
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # PIL's own limit, from its header
        if max_pixels is not None:
            limit = (Image.MAX_IMAGE_PIXELS or 0) * (2 if isinstance(err, Image.DecompressionBombError) else 1)
            raise ImageTooLargeError(str(name or path), f"more than {limit:,}", max_pixels) from err
        raise ImageReadError(f"Cannot read image {name or path}: {err}. Replace or remove the file.") from err
    except UnidentifiedImageError as err:
        raise ImageReadError(
            f"Cannot read image {name or path}: not an image format PIL can decode. Replace or remove the file."
        ) from err
    except (OSError, ValueError) as err:
        raise ImageReadError(f"Cannot read image {name or path}: {err}. Replace or remove the file.") from err


def read_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as img:
            mask = np.asarray(img.convert("L")) > 0  # any non-zero value is anomalous (VisA uses ids)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ImageReadError(f"Cannot read mask {path}: {err}") from err
    if mask.shape != (size[1], size[0]):
        raise ImageReadError(f"Mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is {size[0]}x{size[1]}.")
    return mask


def read_region(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A region mask's values as stored (H,W integers; 0 outside the region)."""
    try:
        with Image.open(path) as img:
            values = np.asarray(img.convert("L") if img.mode not in ("L", "P", "1") else img).astype(np.int64)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ImageReadError(f"Cannot read mask {path}: {err}") from err
    if values.shape != (size[1], size[0]):
        raise ImageReadError(
            f"Mask {path} is {values.shape[1]}x{values.shape[0]} but its image is {size[0]}x{size[1]}."
        )
    return values


def resized(img: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """A decoded image as the models take it, before the [0, 1] scaling: uint8 (3,H,W) at ``size``.
    One function for training, test and predict, so that predict scores what the test scored."""
    return TF.resize(TF.pil_to_tensor(img), list(size), antialias=True)


class AnomalyDataset(Dataset):
    """Samples as dicts: ``image`` (3,H,W RGB in [0, 1]; each method's backbone normalises it),
    ``gt_mask`` (1,H,W in {0,1}), ``gt_label`` (0/1), ``image_path`` (str), ``category`` (str; ""
    for a folder dataset read from its root). Where the records carry defect regions (MVTec LOCO:
    one mask file a region), every sample also holds ``gt_regions`` (1,H,W int64: bit k set where
    region k lies) and ``gt_saturation`` (``MAX_REGIONS`` floats: region k's saturation area in
    pixels at this size, 0 past the image's last region), what :class:`adkd.metrics.spro.SPRO` takes.
    Where the records name the part each image shows (Real-IAD's multi-view protocol), ``sample`` (str).

    ``cache``: every image (and mask) is decoded and resized once, up front, and kept as uint8
    (0.2 MB an image at 256 px): an epoch then costs no decoding, and loader workers share the
    tensors. ``synthesizer``: a callable ([0, 1] image (3,H,W)) -> (image, mask (1,H,W)) that
    adds a synthetic anomaly (methods that train on them, e.g. ADPS, set it for fit). It runs
    per sample here, in the loader's workers, so the accelerator never waits on it; with
    ``fixed_synthesis`` sample i always gets the same anomaly (validation losses comparable
    across epochs). Such samples also hold ``clean``, the image before its anomaly, where the
    synthesizer's ``keep_clean`` asks for it.
    """

    def __init__(self, records: list[Record], image_size: int, cache: bool = False) -> None:
        self.records = records
        self.image_size = (int(image_size), int(image_size))
        self.synthesizer = None
        self.fixed_synthesis = False
        self.regions = any(r.regions for r in records)
        self._cache: list[tuple] | None = None
        if cache:
            self._cache = self._load_all()

    def __len__(self) -> int:
        return len(self.records)

    def _load_all(self) -> list[tuple]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
            return list(pool.map(self._load, range(len(self.records))))

    def _load(self, index: int) -> tuple:
        """uint8 image (3,H,W) and bool mask (1,H,W), resized; and where the dataset has regions,
        the regions' bits (1,H,W) and saturation areas (``MAX_REGIONS``)."""
        record = self.records[index]
        img = read_image(record.image_path)
        image = resized(img, self.image_size)
        if record.regions:
            bits, saturation = self._regions(record, img.size)
            return image, bits != 0, bits, saturation
        if record.mask_path is not None:
            mask = self._resized_mask(read_mask(record.mask_path, img.size))
        else:
            mask = torch.zeros(1, *self.image_size, dtype=torch.bool)
        if self.regions:
            return image, mask, torch.zeros(1, *self.image_size, dtype=torch.int64), torch.zeros(MAX_REGIONS)
        return image, mask

    def _resized_mask(self, mask: np.ndarray) -> torch.Tensor:
        """A bool mask (H,W) at the dataset's size (1,H,W): the rule every mask is resized by."""
        mask = torch.from_numpy(mask)[None].to(torch.uint8) * 255
        return TF.resize(mask, list(self.image_size), antialias=False) > 127

    def _regions(self, record: Record, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The regions of ``record`` at the dataset's size, as bits (1,H,W int64) and saturation areas:
        each region file holds one defect type's pixel value, which names its saturation rule."""
        if len(record.regions) > MAX_REGIONS:
            raise ImageReadError(
                f"{record.image_path} has {len(record.regions)} regions; at most {MAX_REGIONS} are read"
            )
        rules = {s.pixel_value: s for s in record.saturations}
        scale = self.image_size[0] * self.image_size[1] / (size[0] * size[1])
        bits = torch.zeros(1, *self.image_size, dtype=torch.int64)
        saturation = torch.zeros(MAX_REGIONS)
        for k, path in enumerate(record.regions):
            values = read_region(path, size)
            positive = np.unique(values[values > 0])
            if len(positive) != 1 or int(positive[0]) not in rules:
                raise ImageReadError(
                    f"Region mask {path} holds the values {positive.tolist()}: a region file holds one defect type's "
                    f"pixel value, one of {sorted(rules)} (the category's defects_config.json)"
                )
            region = self._resized_mask(values > 0)
            bits |= region.to(torch.int64) << k
            saturation[k] = region_saturation(int(region.sum()), rules[int(positive[0])], scale)
        return bits, saturation

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``key``: an index, or (index, seed) from :class:`SeededSampler` (the seed drives this
        sample's synthetic anomaly)."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, mask, *regions = self._cache[index] if self._cache is not None else self._load(index)
        image, mask = image.float() / 255, mask.float()
        record = self.records[index]
        sample = {
            "gt_label": record.gt_label,
            "image_path": str(record.image_path),
            "category": record.category or "",
            "defect": record.defect,
        }
        if regions:
            sample.update(gt_regions=regions[0], gt_saturation=regions[1])
        if record.sample is not None:  # a part seen from several views (Real-IAD multi-view)
            sample["sample"] = record.sample
        if self.synthesizer is not None:
            seed = index if self.fixed_synthesis else seed
            if getattr(self.synthesizer, "keep_clean", False):
                sample["clean"] = image
            image, mask = self.synthesizer(image) if seed is None else self._synthesize(image, seed)
            sample.update(gt_label=int(mask.any()), synthetic=True)
        return {"image": image, "gt_mask": mask, **sample}

    def _synthesize(self, image: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):  # the global generator is left as it was
            torch.manual_seed(seed)
            return self.synthesizer(image)
