"""MVTec LOCO AD (Bergmann et al., "Beyond Dents and Scratches: Logical Constraints in Unsupervised
Anomaly Detection and Localization", IJCV 2022), read in its released layout.

Each category has normal training images, a normal validation split of its own, and a test split
of normal images, logical anomalies (a part missing, misplaced, of the wrong kind or count) and
structural ones (dents, scratches, contamination). An anomalous image's ground truth is a folder
of mask files, one a defect region, each holding its defect type's pixel value; the image's mask
is their union (any non-zero pixel of any of them), as the dataset's evaluation and anomalib
merge them. ``defects_config.json`` names each defect type's pixel value and saturation rule, which
the sPRO metric reads (:mod:`adkd.metrics.spro`).

Validation uses the dataset's own ``validation/good`` (the loss is tracked, and the thresholds are
set, on it), so every training image is trained on: ``dataset.val_fraction`` does not apply. A
record's defect is its test folder, ``logical_anomalies`` or ``structural_anomalies``, so that the
report splits the two kinds.
"""

from __future__ import annotations

import json
from pathlib import Path

from adkd.data.base import AnomalyDataModule
from adkd.data.records import Record, Saturation, list_images, refuse, visible
from adkd.errors import DataCheckError, DatasetNotFoundError

MVTEC_LOCO_LAYOUT = """\
  <root>/<category>/train/good/*.png
  <root>/<category>/validation/good/*.png
  <root>/<category>/test/{good,logical_anomalies,structural_anomalies}/*.png
  <root>/<category>/ground_truth/{logical_anomalies,structural_anomalies}/<image stem>/000.png, 001.png, ...
  <root>/<category>/defects_config.json"""

ANOMALY_KINDS = ("logical_anomalies", "structural_anomalies")


def read_defects_config(path: Path) -> tuple[Saturation, ...]:
    """Each defect type of a category's ``defects_config.json`` (a list of objects with
    ``defect_name``, ``pixel_value``, ``saturation_threshold`` and ``relative_saturation``)."""
    try:
        entries = json.loads(path.read_text())
        rules = tuple(
            Saturation(
                pixel_value=int(e["pixel_value"]),
                threshold=float(e["saturation_threshold"]),
                relative=bool(e["relative_saturation"]),
                name=str(e["defect_name"]),
            )
            for e in entries
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataCheckError(
            f"{path} cannot be read as MVTec LOCO's defects config ({type(err).__name__}: {err}): a list of "
            "{defect_name, pixel_value, saturation_threshold, relative_saturation}. Restore the released file."
        ) from err
    bad = [r.name for r in rules if not 1 <= r.pixel_value <= 255 or (r.relative and not 0 < r.threshold <= 1)]
    if bad:
        raise DataCheckError(
            f"{path}: defect types {', '.join(bad)} have a pixel value outside 1..255 or a relative saturation "
            "outside (0, 1]. Restore the released file."
        )
    return rules


class MVTecLOCODataModule(AnomalyDataModule):
    """MVTec LOCO AD: 5 categories; thresholds from the dataset's own normal validation images."""

    name = "mvtec_loco"
    categories = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")
    default_category = "breakfast_box"
    download_name = "mvtec_loco"

    @property
    def path(self) -> Path:
        return self.root / self.category

    def is_present(self) -> bool:
        return (self.path / "train" / "good").is_dir()

    def check_available(self) -> None:
        if self.is_present():
            return
        raise DatasetNotFoundError(
            f"MVTec LOCO AD category {self.category!r} not found at {self.path}.\nExpected layout:\n"
            f"{MVTEC_LOCO_LAYOUT}\nGet it from https://www.mvtec.com/company/research/datasets/mvtec-loco (free for "
            "non-commercial use), extract it and set dataset.root=/path/to/mvtec_loco, or add dataset.download=true."
        )

    def _folder(self, *parts: str) -> Path:
        folder = self.path.joinpath(*parts)
        if not folder.is_dir():
            raise DatasetNotFoundError(
                f"Missing folder {folder}.\nExpected the MVTec LOCO AD layout:\n{MVTEC_LOCO_LAYOUT}"
            )
        return folder

    def saturations(self) -> tuple[Saturation, ...]:
        """The category's saturation rule per defect type, from its ``defects_config.json``."""
        config = self.path / "defects_config.json"
        if not config.is_file():
            raise DatasetNotFoundError(
                f"Missing {config}: MVTec LOCO AD's sPRO needs each defect type's saturation rule.\n"
                f"Expected the MVTec LOCO AD layout:\n{MVTEC_LOCO_LAYOUT}"
            )
        return read_defects_config(config)

    def records(self, split: str) -> list[Record]:
        """``train`` (train/good), ``validation`` (validation/good) or ``test`` (test/good and the
        anomalies, each with its region masks). Images are ``.png``, as released."""
        if split in ("train", "validation"):
            return [Record(image, 0) for image in _pngs(self._folder(split, "good"))]
        if split != "test":
            raise ValueError(f"MVTec LOCO AD splits are train, validation and test, not {split!r}")
        records = [Record(image, 0) for image in _pngs(self._folder("test", "good"))]
        saturations, problems = self.saturations(), []
        for kind in ANOMALY_KINDS:
            for image in _pngs(self._folder("test", kind)):
                regions = self.path / "ground_truth" / kind / image.stem
                masks = tuple(_pngs(regions)) if regions.is_dir() else ()
                if not masks:
                    problems.append(f"{image} has no region masks in {regions}: restore them from the release")
                    continue
                records.append(Record(image, 1, masks[0], kind, regions=masks, saturations=saturations))
        refuse(problems, f"{self.name}/{self.category}")
        return records

    def labelled_validation(self) -> list[Record]:
        """``validation/good``: normal images only, so thresholds are set at the false-positive
        rate they are meant for, on images no model was trained on."""
        return self.records("validation")


def _pngs(folder: Path) -> list[Path]:
    """The ``.png`` files of ``folder`` in name order (anomalib reads ``.png`` and ``.PNG`` alone)."""
    return [p for p in list_images(folder) if p.suffix.lower() == ".png" and visible(p)]
