"""ELPV (Deitsch et al., 2019): real electroluminescence images of solar cells, image labels only.

The images come from the ``elpv-dataset`` package (installed as a dependency, never copied).
Each cell carries an expert's defect probability in {0, 1/3, 2/3, 1}. Protocol (ours; the
dataset defines none for anomaly detection):

- a category is a module type: ``mono`` or ``poly``;
- normal = probability 0, anomalous = probability >= ``min_defect_probability`` (default: any
  defect vote); cells in between are left out;
- the normal cells are shuffled with a fixed seed (0, independent of the run's seed) and
  ``test_normal_fraction`` of them go to the test split with every anomalous cell; the rest
  is the training (and validation) data. Mono: 441 train / 147+486 test; poly: 690 / 230+630.
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
        **kwargs,
    ) -> None:
        self.test_normal_fraction = test_normal_fraction
        self.min_defect_probability = min_defect_probability
        super().__init__(root=root, category=category, **kwargs)
        self.root = self.root or elpv_folder()

    def check_available(self) -> None:
        folder = self.root or elpv_folder()
        if not (folder / "labels.csv").is_file():
            raise DatasetNotFoundError(f"ELPV labels not found at {folder / 'labels.csv'}")

    def records(self, split: str) -> list[Record]:
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
        n_test = int(round(len(normal) * self.test_normal_fraction))
        test_ids = set(order[:n_test])
        if split == "train":
            return [r for i, r in enumerate(normal) if i not in test_ids]
        return [r for i, r in enumerate(normal) if i in test_ids] + anomalous
