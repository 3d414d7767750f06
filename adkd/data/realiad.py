"""Real-IAD (Wang et al., "Real-IAD: A Real-World Multi-View Dataset for Benchmarking Versatile
Industrial Anomaly Detection", CVPR 2024), read in its released layout with its JSON splits.

30 categories; every part (a *sample*) is photographed from 5 camera views (``C1`` .. ``C5``), and
the 151,050 images come at 1024 px (``realiad_1024``), at their original 2,000-5,000 px
(``realiad_raw``) and, in some copies, at 256 or 512 px. Each category's split is a JSON file
``{"meta": {"prefix": "<category>/", "normal_class": "OK"}, "train": [...], "test": [...]}`` whose
entries name ``category``, ``anomaly_class`` (``OK`` or a defect code such as ``AK``), ``image_path``
and ``mask_path`` (``null`` for a normal image), relative to ``realiad_<resolution>/<prefix>``.

Two protocols, each the authors' JSON set (``dataset.protocol``):

- ``multi_view`` (``realiad_jsons``): every view of every sample. A view of a defective part on
  which the defect does not show is a normal image (``anomaly_class`` ``OK``, no mask); the
  *sample-level* label is that of its worst view, and its score the highest of its views' scores
  (the authors' evaluation, ADEval's ``--sample_key_pat``): metrics.json gains ``sample_auroc``,
  ``sample_ap`` and ``sample_f1max``. A sample is ``<category>_<4 digits>_<OK|NG>``, read from the
  file name before its ``_C<view>_``.
- ``single_view`` (``realiad_jsons_sv``): the ``C1`` view only; image metrics alone.

Validation holds out ``dataset.val_fraction`` of the normal training images (Real-IAD has no
validation split of its own); multi-view, of the normal training parts, every view of a part on the
same side, so that no validation image shows a part trained on. A record's defect is its ``anomaly_class``. ``category=all`` is the
multi-class (unified) setting of the paper's headline tables.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from adkd.data.base import AnomalyDataModule
from adkd.data.records import Record, refuse, within
from adkd.errors import ConfigError, DataCheckError, DatasetNotFoundError

REALIAD_URL = "https://huggingface.co/datasets/REAL-IAD/Real-IAD"
PROTOCOLS = {"multi_view": "realiad_jsons", "single_view": "realiad_jsons_sv"}  # protocol -> JSON set
RESOLUTIONS = ("1024", "raw", "512", "256")
# The authors' sample key (ADEval's --sample_key_pat in the Real-IAD repository's README): the file
# name up to the view, e.g. audiojack_0001_NG of audiojack_0001_NG_C3_20231023092610.jpg.
SAMPLE_KEY = re.compile(r"([a-zA-Z][a-zA-Z0-9_]*_[0-9]{4}_[A-Z][A-Z_]*[A-Z])_C[0-9]_")

REALIAD_LAYOUT = """\
  <root>/realiad_1024/<category>/OK/S0001/<category>_0001_OK_C1_<time>.jpg    (realiad_raw, _512, _256 alike)
  <root>/realiad_1024/<category>/NG/<defect>/S0123/<category>_0123_NG_C1_<time>.jpg and .png (its mask)
  <root>/realiad_jsons/<category>.json      (multi_view; or realiad_jsons/realiad_jsons/<category>.json)
  <root>/realiad_jsons_sv/<category>.json   (single_view; or realiad_jsons/realiad_jsons_sv/<category>.json)"""

GET_IT = (
    f"Real-IAD is shared by its authors on request: ask for access at {REALIAD_URL} (or through "
    "https://realiad4ad.github.io/Real-IAD); once granted, `huggingface-cli login` and `huggingface-cli download "
    "--repo-type dataset REAL-IAD/Real-IAD --local-dir /path/to/Real-IAD` fetch it. Extract realiad_jsons.zip "
    "and the images of one resolution (one archive a category, e.g. realiad_1024/<category>.zip) in that folder "
    "and set dataset.root=/path/to/Real-IAD"
)


def sample_of(image_path: str) -> str | None:
    """The sample an image shows (``<category>_<4 digits>_<OK|NG>``), by the authors' key on its
    file name; None where the name does not follow the release's pattern."""
    found = SAMPLE_KEY.search(Path(image_path).name)
    return found.group(1) if found else None


def view_of(image_path: str) -> int | None:
    """The camera view (1..5) an image was taken from, from its file name's ``_C<view>_``."""
    found = re.search(r"_C([0-9])_", Path(image_path).name)
    return int(found.group(1)) if found else None


class RealIADDataModule(AnomalyDataModule):
    """Real-IAD: 30 categories, 5 views a sample; ``protocol`` multi_view or single_view."""

    name = "realiad"
    categories = (
        "audiojack",
        "bottle_cap",
        "button_battery",
        "end_cap",
        "eraser",
        "fire_hood",
        "mint",
        "mounts",
        "pcb",
        "phone_battery",
        "plastic_nut",
        "plastic_plug",
        "porcelain_doll",
        "regulator",
        "rolled_strip_base",
        "sim_card_set",
        "switch",
        "tape",
        "terminalblock",
        "toothbrush",
        "toy",
        "toy_brick",
        "transistor1",
        "u_block",
        "usb",
        "usb_adaptor",
        "vcpill",
        "wooden_beads",
        "woodstick",
        "zipper",
    )
    default_category = "audiojack"

    def __init__(
        self,
        root: str | None = None,
        category: str | None = None,
        protocol: str = "multi_view",
        resolution: str | int = 1024,
        download: bool = False,
        **kwargs,
    ) -> None:
        if download:
            raise ConfigError(f"Real-IAD cannot be downloaded by adkd without its authors' approval. {GET_IT}.")
        if protocol not in PROTOCOLS:
            raise ConfigError(f"dataset.protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        if str(resolution) not in RESOLUTIONS:
            raise ConfigError(
                f"dataset.resolution must be one of {', '.join(RESOLUTIONS)} (the folder realiad_<resolution>), "
                f"got {resolution!r}"
            )
        self.protocol, self.resolution = protocol, str(resolution)
        super().__init__(root=root or "datasets/realiad", category=category, **kwargs)

    @property
    def images(self) -> Path:
        return self.root / f"realiad_{self.resolution}"

    @property
    def split_file(self) -> Path:
        """The category's JSON of the protocol's set: ``<root>/realiad_jsons/<set>/`` (the archive
        extracted as it unpacks) or ``<root>/<set>/`` (the authors' repository's layout)."""
        folder = PROTOCOLS[self.protocol]
        candidates = [self.root / "realiad_jsons" / folder, self.root / folder]
        return next((c for c in candidates if c.is_dir()), candidates[-1]) / f"{self.category}.json"

    def is_present(self) -> bool:
        return self.split_file.is_file() and (self.images / self.category).is_dir()

    def check_available(self) -> None:
        if self.is_present():
            return
        missing = self.split_file if not self.split_file.is_file() else self.images / self.category
        raise DatasetNotFoundError(
            f"Real-IAD category {self.category!r} ({self.protocol}, realiad_{self.resolution}) not found: "
            f"no {missing}.\nExpected layout:\n{REALIAD_LAYOUT}\n{GET_IT}."
        )

    def _split_train_val(self, train: list[Record]) -> tuple[list[Record], list[Record]]:
        """Multi-view: ``val_fraction`` of the parts held out with all their views (the same ones
        for every run); single-view, of the images, as every dataset."""
        if self.protocol != "multi_view":
            return super()._split_train_val(train)
        parts = list(dict.fromkeys(r.sample for r in train if r.gt_label == 0))
        order = list(range(len(parts)))
        random.Random(0).shuffle(order)
        held = {parts[i] for i in order[: int(round(len(parts) * self.val_fraction)) if len(parts) > 1 else 0]}
        normal = [r for r in train if r.gt_label == 0]
        return [r for r in normal if r.sample not in held], [r for r in normal if r.sample in held]

    def read_split_file(self) -> dict:
        """The category's JSON, checked for the release's structure."""
        path = self.split_file
        try:
            content = json.loads(path.read_text())
            meta = content["meta"]
            ok = isinstance(meta, dict) and all(isinstance(content[s], list) for s in ("train", "test"))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataCheckError(
                f"{path} cannot be read as a Real-IAD split ({type(err).__name__}: {err}): an object with meta, "
                "train and test. Restore the released file."
            ) from err
        if not ok:
            raise DataCheckError(f"{path}: meta must be an object, train and test lists. Restore the released file.")
        return content

    def records(self, split: str) -> list[Record]:
        """``train`` (the JSON's train entries of the normal class) or ``test`` (all of its test
        entries; an anomalous one with its mask). In the multi-view protocol every record carries
        its sample."""
        if split not in ("train", "test"):
            raise ValueError(f"Real-IAD splits are train and test, not {split!r}")
        content = self.read_split_file()
        meta = content["meta"]
        normal_class = str(meta.get("normal_class", "OK"))
        base = self.images / str(meta.get("prefix") or self.category).strip("/")
        records, problems = [], []
        for index, entry in enumerate(content[split]):
            where = f"{self.split_file}, {split}[{index}]"
            try:
                image_name, defect, mask_name = entry["image_path"], str(entry["anomaly_class"]), entry.get("mask_path")
            except (KeyError, TypeError):
                problems.append(f"{where} lacks image_path or anomaly_class: restore the released file")
                continue
            anomalous = defect != normal_class
            if split == "train" and anomalous:
                continue  # anomaly-free training: the normal images alone
            image = within(base, image_name, where)
            if anomalous and not mask_name:
                problems.append(f"{where}: the anomalous image {image_name} has no mask_path; Real-IAD gives every one")
                continue
            sample = sample_of(image_name) if self.protocol == "multi_view" else None
            if self.protocol == "multi_view" and sample is None:
                problems.append(
                    f"{where}: {image_name} is not named <category>_<4 digits>_<OK|NG>_C<view>_..., so its "
                    "sample is unknown; restore the released file"
                )
                continue
            mask = within(base, mask_name, where) if anomalous else None
            records.append(Record(image, int(anomalous), mask, defect if anomalous else "good", sample=sample))
        refuse(problems, f"{self.name}/{self.category}")
        if not records:
            raise DatasetNotFoundError(f"No {split} entries for {self.category!r} in {self.split_file}")
        return records


def category_cost(
    root: str | Path, category: str, protocol: str = "multi_view", resolution: str | int = 1024
) -> dict[str, int]:
    """What one category costs in a downloaded copy: its training and test images and samples under
    ``protocol``, and the bytes of the files they read (images and masks) at ``resolution``."""
    dm = RealIADDataModule(root=str(root), category=category, protocol=protocol, resolution=resolution)
    train, test = dm.records("train"), dm.records("test")
    files = {p for r in (*train, *test) for p in (r.image_path, *r.mask_paths)}
    return {
        "train_images": len(train),
        "test_images": len(test),
        "test_anomalous": sum(r.gt_label for r in test),
        "test_samples": len({r.sample for r in test}) if protocol == "multi_view" else len(test),
        "bytes": sum(p.stat().st_size for p in files if p.is_file()),
    }
