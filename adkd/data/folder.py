"""Any folder in the MVTec AD layout, and MVTec AD itself."""

from __future__ import annotations

from pathlib import Path

from adkd.data.base import AnomalyDataModule
from adkd.data.records import Record, mvtec_layout_records, visible
from adkd.errors import ConfigError, DatasetNotFoundError

MVTEC_LAYOUT = """\
  <root>/<category>/train/good/*.png
  <root>/<category>/test/good/*.png
  <root>/<category>/test/<defect>/*.png
  <root>/<category>/ground_truth/<defect>/<image stem>_mask.png   (optional)"""


class FolderDataModule(AnomalyDataModule):
    """Your own images in the MVTec AD layout: ``root/category`` (or ``root`` when category is empty)."""

    name = "folder"

    def __init__(self, root: str | None = None, category: str | None = None, **kwargs) -> None:
        if not root:
            raise DatasetNotFoundError(
                "dataset.root is not set: point it at a folder in the MVTec AD layout:\n" + MVTEC_LAYOUT
            )
        super().__init__(root=root, category=category, **kwargs)

    @property
    def path(self) -> Path:
        return self.root / self.category if self.category else self.root

    @property
    def has_masks(self) -> bool:
        return (self.path / "ground_truth").is_dir()

    def is_present(self) -> bool:
        return (self.path / "train" / "good").is_dir()

    def check_available(self) -> None:
        if not self.is_present():
            raise DatasetNotFoundError(
                f"No training images at {self.path / 'train' / 'good'}.\nExpected the MVTec AD layout:\n{MVTEC_LAYOUT}"
            )

    def records(self, split: str) -> list[Record]:
        return mvtec_layout_records(self.path, split)

    def labelled_validation(self) -> list[Record] | None:
        """``<category>/val/{good,<defect>}``, if there is one."""
        return mvtec_layout_records(self.path, "val", masks=False) if (self.path / "val").is_dir() else None

    @classmethod
    def category_names(cls, root: str | None) -> tuple[str, ...]:
        """The dataset's list, or for a folder of your own the subfolders of ``root`` in the MVTec AD
        layout (``<root>/<category>/train/good``), in name order."""
        if cls.categories or not root:
            return cls.categories
        folder = Path(root).expanduser()
        if (folder / "train" / "good").is_dir():
            raise ConfigError(
                f"dataset.root={folder} is one category (it holds train/good itself): category=all trains one model "
                "on several categories and needs a folder of them, each in the MVTec AD layout:\n"
                + MVTEC_LAYOUT.replace("<root>/", f"{folder}/")
            )
        if not folder.is_dir():
            return ()
        return tuple(sorted(d.name for d in folder.iterdir() if visible(d) and (d / "train" / "good").is_dir()))


class MVTecADDataModule(FolderDataModule):
    """MVTec AD (Bergmann et al., CVPR 2019): 15 categories, pixel masks."""

    name = "mvtec"
    categories = (
        "bottle",
        "cable",
        "capsule",
        "carpet",
        "grid",
        "hazelnut",
        "leather",
        "metal_nut",
        "pill",
        "screw",
        "tile",
        "toothbrush",
        "transistor",
        "wood",
        "zipper",
    )
    default_category = "bottle"

    def __init__(self, root: str | None = None, category: str | None = None, **kwargs) -> None:
        super().__init__(root=root or "datasets/mvtec", category=category, **kwargs)  # a folder needs a root

    download_name = "mvtec"

    def check_available(self) -> None:
        if not self.is_present():
            raise DatasetNotFoundError(
                f"MVTec AD category {self.category!r} not found at {self.path}.\n"
                f"Expected layout:\n{MVTEC_LAYOUT}\n"
                "Get it from https://www.mvtec.com/company/research/datasets/mvtec-ad (free for "
                "non-commercial use), extract it and set dataset.root=/path/to/mvtec, or add "
                "dataset.download=true to fetch it (about 5 GB)."
            )
        super().check_available()
