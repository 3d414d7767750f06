"""VisA (Zou et al., ECCV 2022), read in its released layout with the official 1cls split."""

from __future__ import annotations

import csv
from pathlib import Path

from adkd.data.base import AnomalyDataModule
from adkd.data.records import Record, within
from adkd.errors import DataCheckError, DatasetNotFoundError

VISA_LAYOUT = """\
  <root>/split_csv/1cls.csv                     (columns object,split,label,image,mask)
  <root>/<object>/Data/Images/{Normal,Anomaly}/*.JPG
  <root>/<object>/Data/Masks/Anomaly/*.png"""


class VisADataModule(AnomalyDataModule):
    """VisA: 12 objects; training on the split file's normal train images."""

    name = "visa"
    categories = (
        "candle",
        "capsules",
        "cashew",
        "chewinggum",
        "fryum",
        "macaroni1",
        "macaroni2",
        "pcb1",
        "pcb2",
        "pcb3",
        "pcb4",
        "pipe_fryum",
    )
    default_category = "candle"

    @property
    def split_file(self) -> Path:
        return self.root / "split_csv" / "1cls.csv"

    download_name = "visa"

    def is_present(self) -> bool:
        return self.split_file.is_file()

    def check_available(self) -> None:
        if self.is_present():
            return
        raise DatasetNotFoundError(
            f"VisA not found: no split file at {self.split_file}.\nExpected layout:\n{VISA_LAYOUT}\n"
            "Get it from https://github.com/amazon-science/spot-diff (VisA_20220922.tar), extract it "
            "and set dataset.root=/path/to/visa, or add dataset.download=true."
        )

    def records(self, split: str) -> list[Record]:
        records = []
        with self.split_file.open(newline="") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                if row["object"] != self.category or row["split"] != split:
                    continue
                anomalous = row["label"].strip().lower() == "anomaly"
                if split == "train" and anomalous:
                    continue
                where = f"{self.split_file}, line {line}"
                if anomalous and not (row.get("mask") or "").strip():
                    raise DataCheckError(
                        f"{where}: the anomalous image {row['image']} has no mask; VisA gives every "
                        "anomalous image one. Fix or replace that file."
                    )
                mask = within(self.root, row["mask"], where) if anomalous else None
                records.append(
                    Record(
                        within(self.root, row["image"], where), int(anomalous), mask, "anomaly" if anomalous else "good"
                    )
                )
        if not records:
            raise DatasetNotFoundError(f"No {split} rows for {self.category!r} in {self.split_file}")
        return records
