"""ELPV (Deitsch et al., 2019): real electroluminescence images of solar cells, image labels only.

The images come from the ``elpv-dataset`` package (installed as a dependency, never copied).
Each cell carries an expert's defect probability in {0, 1/3, 2/3, 1}. Protocol (ours; the
dataset defines none for anomaly detection):

- a category is a module type: ``mono`` or ``poly``;
- normal = probability 0, anomalous = probability >= ``min_defect_probability`` (default: any
  defect vote); cells in between are left out;
- the normal cells are shuffled with a fixed seed (0, independent of the run's seed) and
  ``test_normal_fraction`` of them go to the test split with every anomalous cell; the rest
  is the training data;
- ``validation_fraction`` of those held-out cells (normal ones, and of each defect probability)
  form a labelled validation split of real defects, disjoint from the test split (a second fixed
  shuffle, seed 1): thresholds are set on its normal cells, and settings are chosen on it
  (``evaluate=validation``), never on the test split.
  Mono: 441 train / 49+162 validation / 98+324 test; poly: 690 / 77+210 / 153+420.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from adkd.data.base import AnomalyDataModule
from adkd.data.records import Record
from adkd.errors import DatasetNotFoundError


def elpv_folder() -> Path:
    try:
        import elpv_dataset
    except ImportError as err:
        raise DatasetNotFoundError(
            "ELPV needs the package elpv-dataset: pip install elpv-dataset==1.0.0.post1"
        ) from err
    return Path(elpv_dataset.__file__).parent / "data"


class ELPVDataModule(AnomalyDataModule):
    name = "elpv"
    categories = ("mono", "poly")
    default_category = "mono"
    has_masks = False

    def __init__(
        self,
        root: str | None = None,
        category: str | None = None,
        test_normal_fraction: float = 0.25,
        min_defect_probability: float = 0.3,
        validation_fraction: float = 1 / 3,
        **kwargs,
    ) -> None:
        self.test_normal_fraction = test_normal_fraction
        self.validation_fraction = validation_fraction
        self.min_defect_probability = min_defect_probability
        super().__init__(root=root, category=category, **kwargs)
        self.root = self.root or elpv_folder()

    def check_available(self) -> None:
        folder = self.root or elpv_folder()
        if not (folder / "labels.csv").is_file():
            raise DatasetNotFoundError(f"ELPV labels not found at {folder / 'labels.csv'}")

    def records(self, split: str) -> list[Record]:
        """``train``, ``validation`` or ``test``."""
        normal, anomalous = [], []
        with (self.root / "labels.csv").open() as f:
            for row in csv.reader(f, delimiter=" ", skipinitialspace=True):
                path, prob, kind = row[0], float(row[1]), row[2]
                if kind != self.category:
                    continue
                if prob == 0:
                    normal.append(Record(self.root / path, 0))
                elif prob >= self.min_defect_probability:
                    anomalous.append(Record(self.root / path, 1, None, f"p{prob:.2f}"))
        order = list(range(len(normal)))
        random.Random(0).shuffle(order)
        n_held_out = int(round(len(normal) * self.test_normal_fraction))
        if split == "train":
            return [normal[i] for i in sorted(order[n_held_out:])]
        held_out = [normal[i] for i in sorted(order[:n_held_out])]
        groups = [held_out] + [[r for r in anomalous if r.defect == d] for d in sorted({r.defect for r in anomalous})]
        validation, test = [], []
        for group in groups:  # the same share of each kind of cell in both splits
            picked = list(range(len(group)))
            random.Random(1).shuffle(picked)
            n_val = int(round(len(group) * self.validation_fraction))
            validation += [group[i] for i in sorted(picked[:n_val])]
            test += [group[i] for i in sorted(picked[n_val:])]
        return validation if split == "validation" else test

    def labelled_validation(self) -> list[Record]:
        """Real defects held out from the test split (see the module's docstring)."""
        return self.records("validation")
