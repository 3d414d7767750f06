"""What a dataset is before it is loaded: a list of records (image file, label, optional mask file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adkd.errors import DataCheckError, DatasetNotFoundError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Record:
    """One image of a dataset split. ``gt_label`` is 0 for normal, 1 for anomalous. ``category``:
    the category it belongs to (set by the datamodule; None for a folder dataset read from its root),
    which tells a unified run's categories apart (:mod:`adkd.data.unified`). Records compare by
    their file, label, mask and defect: the category marks where a record is used, not what it is."""

    image_path: Path
    gt_label: int
    mask_path: Path | None = None
    defect: str = "good"
    category: str | None = field(default=None, compare=False)


def within(root: Path, relative: str, where: str) -> Path:
    """``root / relative`` for a path read from one of the dataset's own files (a split CSV),
    refused unless it stays inside ``root``: an absolute path or a ``..`` step would read files
    the dataset does not hold. (Checked on the text: links the user made inside the root are
    followed as usual.)"""
    path = Path(relative.strip())
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise DataCheckError(
            f"{where}: the path {relative!r} leaves the dataset root {root}; a dataset's own files name paths "
            "inside it, relative to it. Fix or replace that file."
        )
    return root / path


def visible(path: Path) -> bool:
    """Hidden files and folders (.ipynb_checkpoints, .DS_Store, ._ copies) are never data."""
    return not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and visible(p))


def mvtec_layout_records(path: Path, split: str, masks: bool = True) -> list[Record]:
    """Records of a folder in the MVTec AD layout.

    ``train/good/*``; ``test/good/*`` and ``test/<defect>/*`` (and likewise an optional labelled
    ``val/``, read with ``masks=False``: its image labels set thresholds); masks at
    ``ground_truth/<defect>/<stem>_mask.png`` (optional: without a ``ground_truth`` folder the
    set has image labels only). Missing masks and unreadable files are left for the data check
    (:mod:`adkd.data.check`), which reports them all at once.
    """
    split_dir = path / split
    if not split_dir.is_dir():
        raise DatasetNotFoundError(f"Missing folder {split_dir} (expected the MVTec AD layout, see README).")
    gt_dir = path / "ground_truth"
    records: list[Record] = []
    for defect_dir in sorted(d for d in split_dir.iterdir() if d.is_dir() and visible(d)):
        defect = defect_dir.name
        if split == "train" and defect != "good":
            continue  # anomaly-free training: other train subfolders are not ours to use
        for image in list_images(defect_dir):
            if defect == "good":
                records.append(Record(image, 0))
                continue
            mask = gt_dir / defect / f"{image.stem}_mask.png" if masks and gt_dir.is_dir() else None
            records.append(Record(image, 1, mask, defect))
    return records
