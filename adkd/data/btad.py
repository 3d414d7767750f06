"""BTAD, the beanTech Anomaly Detection dataset (Mishra et al., ISIE 2021), read in its released layout.

Three products, ``01``, ``02`` and ``03``, each with ``train/ok`` (normal), ``test/ok`` and ``test/ko``
(defective) and ``ground_truth/ko/<image stem>.<ext>``. The release mixes extensions: images are
``.bmp`` or ``.png``, and the masks of ``03`` are ``.bmp`` where those of ``01`` and ``02`` are
``.png`` (as the readers of the dataset's users take them, e.g. dataset-ninja's conversion).

anomalib's ``BTech`` reads a converted copy instead: after downloading, it rewrites every ``.bmp``
as ``.png`` and then always looks for ``<stem>.png`` masks, so on the release as published it names
masks of ``03`` that do not exist. adkd reads the release as it is, and a copy converted by anomalib
as well (a mask is the category's extension, else the other one, whichever exists).
"""

from __future__ import annotations

from pathlib import Path

from adkd.data.base import AnomalyDataModule
from adkd.data.records import Record, list_images
from adkd.errors import DatasetNotFoundError

BTAD_LAYOUT = """\
  <root>/<01|02|03>/train/ok/*.bmp|png
  <root>/<01|02|03>/test/{ok,ko}/*.bmp|png
  <root>/<01|02|03>/ground_truth/ko/<image stem>.png   (.bmp for 03)"""

MASK_SUFFIX = {"01": ".png", "02": ".png", "03": ".bmp"}


class BTADDataModule(AnomalyDataModule):
    """BTAD: train on ``train/ok``, test on ``test/ok`` and ``test/ko``."""

    name = "btad"
    categories = ("01", "02", "03")
    default_category = "01"
    download_name = "btad"

    @property
    def path(self) -> Path:
        return self.root / self.category

    def is_present(self) -> bool:
        return (self.path / "train" / "ok").is_dir()

    def check_available(self) -> None:
        if self.is_present():
            return
        raise DatasetNotFoundError(
            f"BTAD product {self.category!r} not found at {self.path}.\nExpected layout:\n{BTAD_LAYOUT}\n"
            "Get it from https://avires.dimi.uniud.it/papers/btad/btad.zip, extract it (the folders 01, 02 "
            "and 03 of BTech_Dataset_transformed) and set dataset.root=/path/to/btad, or add dataset.download=true."
        )

    def _mask(self, image: Path) -> Path:
        usual = MASK_SUFFIX[self.category]
        other = ".bmp" if usual == ".png" else ".png"
        candidates = [self.path / "ground_truth" / "ko" / f"{image.stem}{suffix}" for suffix in (usual, other)]
        return next((m for m in candidates if m.is_file()), candidates[0])  # a missing mask: the data check says so

    def records(self, split: str) -> list[Record]:
        folders = ("ok",) if split == "train" else ("ok", "ko")
        records = []
        for label in folders:
            folder = self.path / split / label
            if not folder.is_dir():
                raise DatasetNotFoundError(f"Missing folder {folder}.\nExpected the BTAD layout:\n{BTAD_LAYOUT}")
            for image in list_images(folder):
                records.append(Record(image, 0) if label == "ok" else Record(image, 1, self._mask(image), "ko"))
        return records
