"""What a dataset is before it is loaded: a list of records (image file, label, optional mask file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adkd.errors import DataCheckError, DatasetNotFoundError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Saturation:
    """How much of one kind of defect region must be found for it to count as found (MVTec LOCO's
    ``defects_config.json``, one entry a defect type): the region's mask files hold ``pixel_value``;
    ``threshold`` is a pixel count, or with ``relative`` a share of the region's area."""

    pixel_value: int
    threshold: float
    relative: bool
    name: str = ""


@dataclass(frozen=True)
class Record:
    """One image of a dataset split. ``gt_label`` is 0 for normal, 1 for anomalous. ``category``:
    the category it belongs to (set by the datamodule; None for a folder dataset read from its root),
    which tells a unified run's categories apart (:mod:`adkd.data.unified`). Records compare by
    their file, label, mask, regions and defect: the category marks where a record is used, not what it is.

    ``regions``: for a dataset whose ground truth is one file per defect region (MVTec LOCO), every
    region's mask file; ``mask_path`` is the first of them, and the image's mask is their union (any
    non-zero pixel of any of them). ``saturations``: the dataset's saturation rule per defect type,
    which the sPRO metric needs (:mod:`adkd.metrics.spro`). ``sample``: for a dataset that photographs
    each part from several views (Real-IAD's multi-view protocol), the part the image shows: the test
    then also scores each part by its highest-scoring view (``sample_auroc``, :mod:`adkd.training.evaluation`)."""

    image_path: Path
    gt_label: int
    mask_path: Path | None = None
    defect: str = "good"
    category: str | None = field(default=None, compare=False)
    regions: tuple[Path, ...] = ()
    saturations: tuple[Saturation, ...] = field(default=(), compare=False)
    sample: str | None = field(default=None, compare=False)

    @property
    def mask_paths(self) -> tuple[Path, ...]:
        """Every mask file of the image: its regions, or its one mask, or none."""
        return self.regions or ((self.mask_path,) if self.mask_path is not None else ())


def within(root: Path, relative: str, where: str) -> Path:
    """``root / relative`` for a path read from one of the dataset's own files (a split CSV),
    refused unless it stays inside ``root``: an absolute path or a ``..`` step would read files
    the dataset does not hold. (Checked on the text here; where a link inside the root leads,
    :func:`leaving_root` checks for every dataset.)"""
    path = Path(relative.strip())
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise DataCheckError(
            f"{where}: the path {relative!r} leaves the dataset root {root}; a dataset's own files name paths "
            "inside it, relative to it. Fix or replace that file."
        )
    return root / path


def mask_marks_defect(image: Path, mask: Path) -> tuple[bool, str | None]:
    """Whether a dataset's mask file ``mask`` marks any pixel (any non-zero value), and the problem
    with it, if any: it must exist, be readable and be its image's size, whatever it holds (an
    all-zero mask of another size is another image's, or a wrong file). For the datasets whose
    labels come from their masks (KolektorSDD, KolektorSDD2)."""
    import numpy as np
    from PIL import Image

    if not mask.is_file():
        return False, f"{image} has no mask {mask.name} beside it: restore it (the dataset gives every image one)"
    try:
        with Image.open(image) as picture:
            size = picture.size
        with Image.open(mask) as marks:
            if marks.size != size:
                return False, (
                    f"mask {mask} is {marks.size[0]}x{marks.size[1]} but its image is {size[0]}x{size[1]}: "
                    "replace it with the image's own"
                )
            return bool(np.asarray(marks).any()), None
    except (OSError, ValueError) as err:
        return False, f"{mask} or its image {image.name} cannot be read ({err}): replace or remove them"


def refuse(problems: list[str], where: str) -> None:
    """Raise DataCheckError listing ``problems`` (the first 20) found reading ``where``, if any."""
    if problems:
        listed = "\n  - ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        files = "file cannot" if len(problems) == 1 else "files cannot"
        raise DataCheckError(f"{where}: {len(problems)} {files} be used:\n  - {listed}")


def leaving_root(records: list[Record], root: Path | None) -> list[str]:
    """The problems with ``records`` whose files lie inside ``root`` by their path but elsewhere in
    fact: a link in the dataset's tree (to a file or a folder) that leads outside it. The rule of a
    split file's paths (:func:`within`), for the files of every dataset: a dataset reads the files
    it holds. (The root itself may be a link: it is resolved first.)"""
    if root is None:
        return []
    real_root, problems, seen = root.resolve(), [], set()
    for path in (p for r in records for p in (r.image_path, *r.mask_paths)):
        try:
            inside = path.relative_to(root)
        except ValueError:
            continue  # not named under the root: not a link's doing
        real = path.resolve()
        if real == real_root or real_root in real.parents:
            continue
        link = next(
            (
                root / Path(*inside.parts[:n])
                for n in range(1, len(inside.parts) + 1)
                if (root / Path(*inside.parts[:n])).is_symlink()
            ),
            path,
        )
        if link not in seen:
            seen.add(link)
            problems.append(
                f"{link} is a link to {real if link == path else link.resolve()}, outside the dataset "
                f"root {root}: a dataset reads the files it holds. Copy them into it, or set "
                "dataset.root to the folder that holds them"
            )
    return problems


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
