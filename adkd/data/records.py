"""What a dataset is before it is loaded: a list of records (image file, label, optional mask file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Record:
    """One image of a dataset split. ``gt_label`` is 0 for normal, 1 for anomalous."""

    image_path: Path
    gt_label: int
    mask_path: Path | None = None
    defect: str = "good"


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def mvtec_layout_records(path: Path, split: str) -> list[Record]:
    """Records of a folder in the MVTec AD layout.

    ``train/good/*``; ``test/good/*`` and ``test/<defect>/*``; masks at
    ``ground_truth/<defect>/<stem>_mask.png`` (optional: without a ``ground_truth`` folder the
    set has image labels only).
    """
    split_dir = path / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"Missing folder {split_dir} (expected the MVTec AD layout, see README).")
    gt_dir = path / "ground_truth"
    records: list[Record] = []
    for defect_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
        defect = defect_dir.name
        if split == "train" and defect != "good":
            continue  # anomaly-free training: other train subfolders are not ours to use
        for image in list_images(defect_dir):
            if defect == "good":
                records.append(Record(image, 0))
                continue
            mask = None
            if gt_dir.is_dir():
                mask = gt_dir / defect / f"{image.stem}_mask.png"
                if not mask.is_file():
                    raise FileNotFoundError(f"No ground-truth mask for {image}: expected {mask}")
            records.append(Record(image, 1, mask, defect))
    if not records:
        raise FileNotFoundError(f"No images found under {split_dir}")
    return records
