"""MVTec AD 2 (Heckler-Kram et al., 2025), read in its released layout.

Each category has normal training images, a normal-only validation split of its own, a public test
split with masks (``test_public``), and two private test splits without labels (``test_private``;
``test_private_mixed``, lit as seen and as unseen in training) that only MVTec's evaluation server
scores: ``adkd submit`` writes their maps in the form it takes.

Validation uses the dataset's own ``validation/good`` (the loss is tracked, and the thresholds are
set, on it), so every training image is trained on: ``dataset.val_fraction`` does not apply. The
test split is ``test_public``. Categories as anomalib's ``MVTecAD2`` names them.
"""

from __future__ import annotations

from pathlib import Path

from adkd.data.base import AnomalyDataModule
from adkd.data.records import Record, list_images
from adkd.errors import DatasetNotFoundError

MVTEC_AD2_LAYOUT = """\
  <root>/<category>/train/good/*.png
  <root>/<category>/validation/good/*.png
  <root>/<category>/test_public/{good,bad}/*.png
  <root>/<category>/test_public/ground_truth/bad/<image stem>_mask.png
  <root>/<category>/test_private/*.png  <root>/<category>/test_private_mixed/*.png   (no labels)"""

PRIVATE_SPLITS = ("test_private", "test_private_mixed")


class MVTecAD2DataModule(AnomalyDataModule):
    """MVTec AD 2: 8 categories; thresholds from the dataset's own normal validation images."""

    name = "mvtec_ad2"
    categories = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts")
    default_category = "can"
    download_name = "mvtec_ad2"

    @property
    def path(self) -> Path:
        return self.root / self.category

    def is_present(self) -> bool:
        return (self.path / "train" / "good").is_dir()

    def check_available(self) -> None:
        if self.is_present():
            return
        raise DatasetNotFoundError(
            f"MVTec AD 2 category {self.category!r} not found at {self.path}.\nExpected layout:\n{MVTEC_AD2_LAYOUT}\n"
            "Get it from https://www.mvtec.com/company/research/datasets/mvtec-ad-2 (free for non-commercial "
            "use), extract it and set dataset.root=/path/to/mvtec_ad2, or add dataset.download=true."
        )

    def _folder(self, *parts: str) -> Path:
        folder = self.path.joinpath(*parts)
        if not folder.is_dir():
            raise DatasetNotFoundError(f"Missing folder {folder}.\nExpected the MVTec AD 2 layout:\n{MVTEC_AD2_LAYOUT}")
        return folder

    def records(self, split: str) -> list[Record]:
        """``train`` (train/good), ``validation`` (validation/good) or ``test`` (test_public)."""
        if split in ("train", "validation"):
            return [Record(image, 0) for image in list_images(self._folder(split, "good"))]
        if split != "test":
            raise ValueError(f"MVTec AD 2 splits with labels are train, validation and test, not {split!r}")
        masks = self.path / "test_public" / "ground_truth" / "bad"
        normal = [Record(image, 0) for image in list_images(self._folder("test_public", "good"))]
        bad = [
            Record(image, 1, masks / f"{image.stem}_mask.png", "bad")
            for image in list_images(self._folder("test_public", "bad"))
        ]
        return normal + bad

    def labelled_validation(self) -> list[Record]:
        """``validation/good``: normal images only, so thresholds are set at the false-positive
        rate they are meant for, on images no model was trained on."""
        return self.records("validation")

    def private_images(self, split: str) -> list[Path]:
        """The unlabelled images of ``test_private`` or ``test_private_mixed``."""
        if split not in PRIVATE_SPLITS:
            raise ValueError(f"MVTec AD 2's private test splits are {', '.join(PRIVATE_SPLITS)}, not {split!r}")
        return list_images(self._folder(split))
