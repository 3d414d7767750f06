"""Tiny copies of benchmark datasets in their released layouts: the folder trees, file names,
extensions and mask conventions of each release, with a few 16x16 images (both classes, masks
marking a bright square). Readers are checked against reference readers on these trees
(tests/test_readers.py); nothing here is downloaded.

Each function writes one dataset under ``root`` and returns the dataset root a reader is given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 16


class _Painter:
    """Deterministic 16x16 images: a noisy gradient, and for a defect a bright square with its mask."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def image(
        self, path: Path, size: tuple[int, int] = (SIZE, SIZE), defect: bool = False, grey: bool = False
    ) -> np.ndarray:
        """Write an image (format from the suffix) and return its defect mask (bool, H x W)."""
        width, height = size
        base = np.tile(np.linspace(60, 180, width), (height, 1)) + self.rng.normal(0, 8, (height, width))
        mask = np.zeros((height, width), dtype=bool)
        if defect:
            y, x = self.rng.integers(1, height - 5), self.rng.integers(1, width - 5)
            mask[y : y + 4, x : x + 4] = True
            base[mask] = 250
        pixels = np.clip(base, 0, 255).astype(np.uint8)
        picture = Image.fromarray(pixels if grey else np.stack([pixels] * 3, axis=-1))
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(path, **({"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}))
        return mask

    @staticmethod
    def mask(path: Path, mask: np.ndarray, value: int = 255) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * value).save(path)


def mvtec_ad(root: Path, categories: tuple[str, ...] = ("bottle",), n_train: int = 4) -> Path:
    """MVTec AD: ``<category>/train/good``, ``test/{good,<defect>}`` and ``ground_truth/<defect>/<stem>_mask.png``;
    ``bottle``'s defect folders (``broken_large``, ``contamination``) stand for every category's.
    ``n_train`` normal training images a category (a run holds out ``val_fraction`` of them)."""
    for index, category in enumerate(categories):
        defects = (("broken_large", 2), ("contamination", 1))
        _mvtec_layout(_Painter(1 + 100 * index), root / category, n_train, 2, defects)
    return root


def _mvtec_layout(paint: _Painter, cat: Path, n_train: int, n_good: int, defects: tuple) -> None:
    """One category in the MVTec AD layout: ``defects`` as (folder, count) pairs, each image with its mask."""
    for i in range(n_train):
        paint.image(cat / "train" / "good" / f"{i:03d}.png")
    for i in range(n_good):
        paint.image(cat / "test" / "good" / f"{i:03d}.png")
    for defect, count in defects:
        for i in range(count):
            mask = paint.image(cat / "test" / defect / f"{i:03d}.png", defect=True)
            paint.mask(cat / "ground_truth" / defect / f"{i:03d}_mask.png", mask)


def mpdd(root: Path) -> Path:
    """MPDD, category ``bracket_black``: the MVTec AD layout, defects ``hole`` and ``scratches``."""
    _mvtec_layout(_Painter(2), root / "bracket_black", 3, 1, (("hole", 1), ("scratches", 2)))
    return root


def visa(root: Path) -> Path:
    """VisA: ``split_csv/1cls.csv`` (object,split,label,image,mask), ``<object>/Data/Images/{Normal,
    Anomaly}/*.JPG`` (normal images numbered with four digits, anomalous ones with three) and
    ``<object>/Data/Masks/Anomaly/*.png``, whose non-zero values are defect ids (1, 2), not 255."""
    paint = _Painter(3)
    rows = ["object,split,label,image,mask"]
    for obj, n_train, n_test_normal, n_anomaly in (("candle", 3, 2, 2), ("capsules", 1, 0, 1)):
        images = Path(obj) / "Data" / "Images"
        for i in range(n_train + n_test_normal):
            relative = images / "Normal" / f"{i:04d}.JPG"
            paint.image(root / relative)
            rows.append(f"{obj},{'train' if i < n_train else 'test'},normal,{relative.as_posix()},")
        for i in range(n_anomaly):
            relative = images / "Anomaly" / f"{i:03d}.JPG"
            mask_relative = Path(obj) / "Data" / "Masks" / "Anomaly" / f"{i:03d}.png"
            mask = paint.image(root / relative, defect=True)
            paint.mask(root / mask_relative, mask, value=1 + i)
            rows.append(f"{obj},test,anomaly,{relative.as_posix()},{mask_relative.as_posix()}")
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def ksdd2(root: Path) -> Path:
    """KolektorSDD2: ``train/`` and ``test/`` of ``<id>.png`` with ``<id>_GT.png`` (all-zero for a
    defect-free image); defective images in both folders (the supervised protocol trains on some)."""
    paint = _Painter(4)
    for split, first, defective in (("train", 10000, (1,)), ("test", 20000, (0, 2))):
        for i in range(4):
            name = str(first + i)
            mask = paint.image(root / split / f"{name}.png", defect=i in defective)
            paint.mask(root / split / f"{name}_GT.png", mask)
    return root


KSDD_DEFECTIVE = ("kos01/Part3", "kos02/Part5", "kos21/Part1")


def ksdd(root: Path) -> Path:
    """KolektorSDD: ``kosNN/PartN.jpg`` (greyscale) with ``PartN_label.bmp`` for every image (all-zero
    when defect-free), eight parts a commutator; ``kos21`` holds the ``Part7`` its authors leave out."""
    paint = _Painter(5)
    for folder in ("kos01", "kos02", "kos21"):
        for part in range(8):
            name = f"{folder}/Part{part}"
            mask = paint.image(root / f"{name}.jpg", defect=name in KSDD_DEFECTIVE, grey=True)
            paint.mask(root / f"{name}_label.bmp", mask)
    return root


BTAD_EXTENSIONS = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}  # (images, masks)


def btad(root: Path) -> Path:
    """BTAD: ``<product>/{train/ok, test/ok, test/ko, ground_truth/ko}``; masks ``.bmp`` for 03 and
    ``.png`` for 01 and 02, as the release has them."""
    paint = _Painter(6)
    for product, (image_ext, mask_ext) in BTAD_EXTENSIONS.items():
        for i in range(3):
            paint.image(root / product / "train" / "ok" / f"{i:04d}{image_ext}")
        paint.image(root / product / "test" / "ok" / f"0000{image_ext}")
        for i in range(2):
            mask = paint.image(root / product / "test" / "ko" / f"{i:04d}{image_ext}", defect=True)
            paint.mask(root / product / "ground_truth" / "ko" / f"{i:04d}{mask_ext}", mask)
    return root


def mvtec_ad2(root: Path, categories: tuple[str, ...] = ("can",)) -> Path:
    """MVTec AD 2: ``train/good``, ``validation/good``, ``test_public/{good,bad}`` with
    ``test_public/ground_truth/bad/<stem>_mask.png``, and the unlabelled ``test_private/NNN_regular.png``
    and ``test_private_mixed/NNN_mixed.png`` (one of them not square: maps go back at each image's size)."""
    paint = _Painter(7)
    for category in categories:
        cat = root / category
        for i in range(3):
            paint.image(cat / "train" / "good" / f"{i:03d}_regular.png")
        for i in range(2):
            paint.image(cat / "validation" / "good" / f"{i:03d}_regular.png")
        paint.image(cat / "test_public" / "good" / "000_regular.png")
        for i in range(2):
            mask = paint.image(cat / "test_public" / "bad" / f"{i:03d}_regular.png", defect=True)
            paint.mask(cat / "test_public" / "ground_truth" / "bad" / f"{i:03d}_regular_mask.png", mask)
        for i in range(2):
            paint.image(cat / "test_private" / f"{i:03d}_regular.png", defect=i == 1)
        paint.image(cat / "test_private_mixed" / "000_mixed.png")
        paint.image(cat / "test_private_mixed" / "001_mixed.png", size=(24, 16), defect=True)
    return root


LOCO_DEFECTS = (  # defects_config.json as released: one entry a defect type
    {"defect_name": "missing_item", "pixel_value": 255, "saturation_threshold": 20, "relative_saturation": False},
    {"defect_name": "extra_item", "pixel_value": 253, "saturation_threshold": 1.0, "relative_saturation": True},
    {"defect_name": "scratch", "pixel_value": 251, "saturation_threshold": 0.5, "relative_saturation": True},
)


def mvtec_loco(root: Path, categories: tuple[str, ...] = ("breakfast_box",)) -> Path:
    """MVTec LOCO AD: ``train/good``, ``validation/good``, ``test/{good,logical_anomalies,
    structural_anomalies}``, ``ground_truth/<kind>/<stem>/000.png, 001.png ...`` (one file a region,
    holding its defect type's pixel value, not 255 alone; two regions of ``logical_anomalies/001``
    overlap) and ``defects_config.json``."""
    import json

    paint = _Painter(8)
    for category in categories:
        cat = root / category
        for i in range(3):
            paint.image(cat / "train" / "good" / f"{i:03d}.png")
        for i in range(2):
            paint.image(cat / "validation" / "good" / f"{i:03d}.png")
            paint.image(cat / "test" / "good" / f"{i:03d}.png")
        for kind, values in (("logical_anomalies", ((255,), (253, 255))), ("structural_anomalies", ((251,),))):
            for i, region_values in enumerate(values):
                first = paint.image(cat / "test" / kind / f"{i:03d}.png", defect=True)
                regions = [first] + [np.roll(first, 2 * k, axis=1) for k in range(1, len(region_values))]
                for k, (region, value) in enumerate(zip(regions, region_values, strict=True)):
                    paint.mask(cat / "ground_truth" / kind / f"{i:03d}" / f"{k:03d}.png", region, value=value)
        (cat / "defects_config.json").write_text(json.dumps(list(LOCO_DEFECTS), indent=2))
    return root


def realiad(root: Path, categories: tuple[str, ...] = ("audiojack", "pcb"), resolution: str = "1024") -> Path:
    """Real-IAD: ``realiad_<resolution>/<category>/OK/S<4 digits>/<category>_<4 digits>_OK_C<view>_<time>.jpg``
    and ``NG/<defect>/S.../..._NG_C<view>_<time>.jpg`` with a ``.png`` mask beside each view that shows
    its defect; the splits as released, ``realiad_jsons/realiad_jsons/<category>.json`` (every view,
    multi-view) and ``realiad_jsons/realiad_jsons_sv/<category>.json`` (``C1`` alone), each
    ``{"meta": {"prefix", "normal_class"}, "train": [...], "test": [...]}`` with entries ``category``,
    ``anomaly_class``, ``image_path``, ``mask_path`` relative to ``realiad_<resolution>/<prefix>``.

    Per category: six normal training parts, one normal test part and two defective ones (five
    views each). Part 0003 (defect ``AK``) shows it in views C1 and C3, part 0004 (``QS``) in C2
    alone: their other views are normal images (``OK``, no mask) under ``NG/``, as released."""
    import json

    paint = _Painter(9)
    for index, category in enumerate(categories):
        cat = root / f"realiad_{resolution}" / category
        entries: dict[str, list[dict]] = {"train": [], "test": []}
        parts = [("train", number, None, ()) for number in (1, 2, 6, 7, 8, 9)]
        parts += [("test", 5, None, ()), ("test", 3, "AK", (1, 3)), ("test", 4, "QS", (2,))]
        for split, number, defect, shown in parts:
            folder = f"OK/S{number:04d}" if defect is None else f"NG/{defect}/S{number:04d}"
            for view in range(1, 6):
                stem = f"{category}_{number:04d}_{'OK' if defect is None else 'NG'}_C{view}_2023092{index}0{view}1530"
                anomalous = view in shown
                mask = paint.image(cat / folder / f"{stem}.jpg", defect=anomalous)
                if anomalous:
                    paint.mask(cat / folder / f"{stem}.png", mask)
                entries[split].append(
                    {
                        "category": category,
                        "anomaly_class": defect if anomalous else "OK",
                        "image_path": f"{folder}/{stem}.jpg",
                        "mask_path": f"{folder}/{stem}.png" if anomalous else None,
                    }
                )
        meta = {"prefix": f"{category}/", "normal_class": "OK", "pre_transform": None}
        single = {split: [e for e in rows if "_C1_" in e["image_path"]] for split, rows in entries.items()}
        for folder, content in (("realiad_jsons", entries), ("realiad_jsons_sv", single)):
            path = root / "realiad_jsons" / folder / f"{category}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"meta": meta, **content}, indent=1))
    return root
