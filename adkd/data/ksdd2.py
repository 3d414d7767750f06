"""KolektorSDD2 (Bozic et al., 2021) in the unsupervised protocol: train on the defect-free images."""

from __future__ import annotations

from adkd.data.base import AnomalyDataModule
from adkd.data.records import Record, mask_marks_defect, refuse, visible
from adkd.errors import DatasetNotFoundError

KSDD2_LAYOUT = """\
  <root>/train/<id>.png  <root>/train/<id>_GT.png
  <root>/test/<id>.png   <root>/test/<id>_GT.png"""


class KolektorSDD2DataModule(AnomalyDataModule):
    """An image is anomalous when its ``_GT`` mask has any non-zero pixel."""

    name = "ksdd2"
    categories = ("ksdd2",)
    default_category = "ksdd2"

    download_name = "ksdd2"

    def is_present(self) -> bool:
        return (self.root / "train").is_dir() and (self.root / "test").is_dir()

    def check_available(self) -> None:
        if self.is_present():
            return
        raise DatasetNotFoundError(
            f"KolektorSDD2 not found at {self.root}.\nExpected layout:\n{KSDD2_LAYOUT}\n"
            "Get it from https://www.vicos.si/resources/kolektorsdd2/, extract it and set "
            "dataset.root=/path/to/ksdd2, or add dataset.download=true."
        )

    def records(self, split: str) -> list[Record]:
        """Every ``<id>.png`` of the split with its ``<id>_GT.png``: an image without its mask, a
        mask without its image, or a mask of another size (even an all-zero one) stops the run
        with every such file named."""
        folder = self.root / split
        records, problems = [], []
        for image in sorted(p for p in folder.glob("*.png") if visible(p) and not p.stem.endswith("_GT")):
            mask = image.with_name(f"{image.stem}_GT.png")
            positive, problem = mask_marks_defect(image, mask)
            if problem:
                problems.append(problem)
                continue
            if split == "train" and positive:
                continue  # the unsupervised protocol trains on negatives only
            records.append(Record(image, int(positive), mask if positive else None, "defect" if positive else "good"))
        for mask in sorted(p for p in folder.glob("*_GT.png") if visible(p)):
            image = mask.with_name(mask.name.replace("_GT.png", ".png"))
            if not image.is_file():
                problems.append(f"mask {mask} has no image {image.name} beside it")
        refuse(problems, f"KolektorSDD2 {folder}")
        if not records:
            raise DatasetNotFoundError(f"No image/_GT.png pairs under {folder}")
        return records
