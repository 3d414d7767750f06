"""Images that are not the training data: EfficientAD's penalty images (ImageNet in the paper) and
the images a teacher is distilled on.

``method.penalty_images``: a folder (searched recursively: ImageNet's ``train/<class>/*.JPEG``
works as it is), ``bundled`` (the default: the natural images that ship with scikit-image, the
same set synthetic anomalies are cut from, written once to ``~/.cache/adkd/anomaly_source``; it
leaves out the embedded textures, so no penalty image is a piece of the data trained on), or
``none`` (no penalty: the official code's choice without ImageNet). The bundled set is 16 images:
a stand-in that keeps the student's outputs small off the training data, no match for ImageNet's
1.2 million, so ``bundled`` warns.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import Dataset

from adkd.data.records import IMAGE_SUFFIXES
from adkd.data.synthesis import bundled_anomaly_source
from adkd.errors import ConfigError

log = logging.getLogger(__name__)


def image_files(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (recursive, sorted)."""
    return sorted(p for p in Path(folder).expanduser().rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def bundled_images() -> Path:
    """The folder of images that ship with scikit-image (written once)."""
    return bundled_anomaly_source()


def image_folder(setting: str | None, what: str, key: str) -> Path | None:
    """``setting`` -> the folder to read: ``none``/null -> None, ``bundled`` -> scikit-image's
    images (with a warning), otherwise a folder that must hold images."""
    if setting is None or str(setting).lower() in ("", "none", "null", "off"):
        return None
    if str(setting) == "bundled":
        log.warning(
            "EfficientAD: %s from the 16 natural images that ship with scikit-image; the paper uses "
            "ImageNet: set %s=<folder of ImageNet images> to follow it",
            what,
            key,
        )
        return bundled_images()
    folder = Path(setting).expanduser()
    if not folder.is_dir() or not image_files(folder):
        raise ConfigError(
            f"{key}={setting}: no folder of images there. Give a folder of images (ImageNet's "
            f"train/ in the paper), {key}=bundled (images that ship) or {key}=none."
        )
    return folder


class PenaltyImages(Dataset):
    """The paper's penalty images: each resized to twice the image size, grey with probability 0.3,
    its central ``image_size`` square cut out; [0, 1] RGB tensors."""

    def __init__(self, folder: str | Path, image_size: int) -> None:
        from torchvision.transforms import v2

        self.files = image_files(folder)
        self.transform = v2.Compose(
            [
                v2.ToImage(),
                v2.Resize((2 * image_size, 2 * image_size), antialias=True),
                v2.RandomGrayscale(0.3),
                v2.CenterCrop(image_size),
                v2.ToDtype(torch.float32, scale=True),
            ]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[index]) as image:
            return self.transform(image.convert("RGB"))


def endless(loader):  # noqa: ANN001, ANN201
    """Batches of ``loader`` for ever, a new pass (a new order) after each."""
    while True:
        yield from loader
