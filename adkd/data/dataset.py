"""The one torch Dataset every datamodule uses: records in, sample dicts out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from adkd.data.records import Record

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageReadError(RuntimeError):
    """An image or mask file could not be read or does not match its partner."""


def read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ImageReadError(f"Cannot read image {path}: {err}. Replace or remove the file.") from err


def read_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as img:
            mask = np.asarray(img.convert("L")) > 0  # any non-zero value is anomalous (VisA uses ids)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ImageReadError(f"Cannot read mask {path}: {err}") from err
    if mask.shape != (size[1], size[0]):
        raise ImageReadError(f"Mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is {size[0]}x{size[1]}.")
    return mask


class AnomalyDataset(Dataset):
    """Samples as dicts: ``image`` (3,H,W normalised), ``gt_mask`` (1,H,W in {0,1}),
    ``gt_label`` (0/1), ``image_path`` (str).

    With ``cache`` each decoded, resized sample is kept in memory after its first read (for the
    small embedded sets, where decoding would dominate an epoch on a laptop CPU).
    """

    def __init__(self, records: list[Record], image_size: int, cache: bool = False) -> None:
        self.records = records
        self.image_size = (int(image_size), int(image_size))
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        record = self.records[index]
        img = read_image(record.image_path)
        image = TF.to_dtype(TF.pil_to_tensor(img), torch.float32, scale=True)
        image = TF.resize(image, list(self.image_size), antialias=True)
        if record.mask_path is not None:
            mask = torch.from_numpy(read_mask(record.mask_path, img.size)).float()[None]
            mask = (TF.resize(mask, list(self.image_size), antialias=False) > 0.5).float()
        else:
            mask = torch.zeros(1, *self.image_size)
        return image, mask

    def __getitem__(self, index: int) -> dict:
        if self._cache is not None and index in self._cache:
            image, mask = self._cache[index]
        else:
            image, mask = self._load(index)
            if self._cache is not None:
                self._cache[index] = (image, mask)
        record = self.records[index]
        return {
            "image": TF.normalize(image, IMAGENET_MEAN, IMAGENET_STD),
            "gt_mask": mask,
            "gt_label": record.gt_label,
            "image_path": str(record.image_path),
        }


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Inverse of the ImageNet normalisation, for figures: (3,H,W) -> [0,1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=image.device)[:, None, None]
    return (image * std + mean).clamp(0, 1)
