"""KolektorSDD (Tabernik et al., J. Intell. Manuf. 2020): 399 images of electrical commutators,
``kos01`` ... ``kos50`` with eight surfaces each, read in its released layout.

The dataset has no split for training on defect-free images only (its authors cross-validate a
supervised model over folds of whole commutators), and the ADPS paper's text names no split for it
(its tables are images and could not be read). adkd therefore uses anomalib's ``Kolektor`` split, a
public unsupervised protocol with code, so that numbers compare with anomalib's: every defective image is a
test image, and the defect-free ones are split 80/20 into training and test images by a fixed
permutation (seed 42, independent of the run's seed), drawn as scikit-learn's
``train_test_split(train_size=0.8, random_state=42)`` draws it over the defect-free images in path
order. The permutation is numpy's legacy ``RandomState``, whose streams numpy keeps stable across
versions, so the split does not depend on the installed scikit-learn.

Where anomalib and the authors read the dataset differently, adkd follows the authors: their loader
(vicoslab/mixed-segdec-net-comind2021, ``data/input_ksdd.py``) leaves out ``kos21/Part7``, and so does
adkd. It is left out after the split, so every other image is where anomalib puts it. An image is
defective when its ``_label.bmp`` mask has a non-zero pixel (both readers agree). The download is the
release with pixel-wise masks (``KolektorSDD.zip``, anomalib's); that loader's download script fetches
the variant with box annotations (``kolektorsddboxes``), laid out alike, which adkd reads as well.
"""

from __future__ import annotations

import math
import re

import numpy as np

from adkd.data.base import AnomalyDataModule
from adkd.data.records import Record, mask_marks_defect, refuse, visible
from adkd.errors import DatasetNotFoundError

KSDD_LAYOUT = """\
  <root>/kos01/Part0.jpg  <root>/kos01/Part0_label.bmp
  ...
  <root>/kos50/Part7.jpg  <root>/kos50/Part7_label.bmp"""

EXCLUDED = ("kos21/Part7",)  # left out by the authors' own loader
TRAIN_SHARE, SPLIT_SEED = 0.8, 42  # anomalib's Kolektor split


def unsupervised_split(normal: list[Record]) -> tuple[list[Record], list[Record]]:
    """(train, test) of the defect-free images, as anomalib's split: a fixed permutation of the
    images in path order, its first ``n - floor(0.8 n)`` to the test split; both kept in path order."""
    normal = sorted(normal, key=lambda r: str(r.image_path))
    n_test = len(normal) - math.floor(TRAIN_SHARE * len(normal))
    test = set(np.random.RandomState(SPLIT_SEED).permutation(len(normal))[:n_test].tolist())
    return ([r for i, r in enumerate(normal) if i not in test], [r for i, r in enumerate(normal) if i in test])


class KolektorSDDDataModule(AnomalyDataModule):
    """KolektorSDD: train on 80% of the defect-free images, test on the rest and every defective one."""

    name = "ksdd"
    categories = ("ksdd",)
    default_category = "ksdd"
    download_name = "ksdd"

    def _folders(self):  # noqa: ANN202
        return sorted(d for d in self.root.glob("kos*") if d.is_dir() and re.fullmatch(r"kos\d+", d.name))

    def is_present(self) -> bool:
        return self.root.is_dir() and bool(self._folders())

    def check_available(self) -> None:
        if self.is_present():
            return
        raise DatasetNotFoundError(
            f"KolektorSDD not found: no kos01 ... kos50 folders in {self.root}.\nExpected layout:\n{KSDD_LAYOUT}\n"
            "Get it from https://www.vicos.si/resources/kolektorsdd/ (KolektorSDD.zip, the pixel-wise "
            "annotations), extract it and set dataset.root=/path/to/ksdd, or add dataset.download=true."
        )

    def _all(self) -> list[Record]:
        """Every image with its label, ``EXCLUDED`` included (the split is drawn over them all)."""
        records, problems = [], []
        for folder in self._folders():
            for image in sorted(p for p in folder.glob("*.jpg") if visible(p)):
                mask = image.with_name(f"{image.stem}_label.bmp")
                defective, problem = mask_marks_defect(image, mask)
                if problem:
                    problems.append(problem)
                    continue
                records.append(
                    Record(image, int(defective), mask if defective else None, "defect" if defective else "good")
                )
        refuse(problems, f"KolektorSDD {self.root}")
        if not records:
            raise DatasetNotFoundError(f"No PartN.jpg images in the kos folders of {self.root}.\n{KSDD_LAYOUT}")
        return records

    def records(self, split: str) -> list[Record]:
        everything = self._all()
        train, normal_test = unsupervised_split([r for r in everything if r.gt_label == 0])
        chosen = train if split == "train" else normal_test + [r for r in everything if r.gt_label == 1]
        kept = [r for r in chosen if f"{r.image_path.parent.name}/{r.image_path.stem}" not in EXCLUDED]
        return sorted(kept, key=lambda r: str(r.image_path))
