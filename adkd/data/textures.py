"""The embedded pixel-level set: real textures (scikit-image's brick, grass, gravel; CC0) with
procedural defects (scratch, crack, stain, pit from the ``defect-synthesis`` package).

Generated once, deterministically, into an MVTec-layout folder under ``root`` and read from
there like any folder dataset. Training crops come from the top of each 512x512 texture and
test crops from the bottom band, so no test pixel was seen in training. The defects are drawn
by a different generator family than the Perlin/texture-blend anomalies some methods (ADPS)
train on, so those methods are not tested on their own training distribution.

The validation images (``val/good``: what the loss is tracked on and the thresholds are set on)
are further crops of the bottom band, like the test's normal images and never trained on. Held
out from the training crops instead (as ``val_fraction`` does elsewhere), they overlapped pixels
the model had trained on and scored lower than any unseen normal image: thresholds set on them
flagged 20-65% of the good test images. The band is 192 rows high, so validation and test crops
share pixels; no image is in both. A line's own validation images should likewise be good parts
never trained on, from the production the model will score.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
from PIL import Image

from adkd.data.folder import FolderDataModule

log = logging.getLogger(__name__)

TEXTURES = ("brick", "grass", "gravel")
DEFECTS = ("scratch", "crack", "stain", "pit")
FORMAT_VERSION = 2  # 2: val/good from the test band


def _defect_generator(kind: str, crop: int):
    import defect_synthesis as ds

    s = crop / 128  # parameters below are for 128 px crops
    if kind == "scratch":
        return ds.ScratchGenerator(length_range=(int(30 * s), int(80 * s)), width_range=(1, max(2, int(3 * s))))
    if kind == "crack":
        return ds.CrackGenerator(base_length_range=(int(30 * s), int(90 * s)), base_width_range=(1, max(2, int(3 * s))))
    if kind == "stain":
        return ds.StainGenerator(radius_range=(int(8 * s), int(22 * s)))
    if kind == "pit":
        return ds.PittingGenerator(
            cluster_size_range=(4, 12), pit_radius_range=(1, max(2, int(4 * s))), spread_radius=int(16 * s)
        )
    raise ValueError(kind)


def _texture(name: str) -> np.ndarray:
    import skimage.data

    grey = getattr(skimage.data, name)()
    return np.repeat(grey[..., None], 3, axis=2)


def _crops(image: np.ndarray, rows: tuple[int, int], crop: int, n: int, rng: random.Random) -> list[np.ndarray]:
    top, bottom = rows
    out = []
    for _ in range(n):
        y = rng.randint(top, bottom - crop)
        x = rng.randint(0, image.shape[1] - crop)
        out.append(image[y : y + crop, x : x + crop].copy())
    return out


def generate(
    folder: Path, category: str, crop_size: int, n_train: int, n_test_good: int, n_test_defect: int, n_val: int
) -> None:
    """Write one texture category in the MVTec AD layout (with ``val/good``) into ``folder``."""
    params = dict(
        version=FORMAT_VERSION,
        category=category,
        crop_size=crop_size,
        n_train=n_train,
        n_test_good=n_test_good,
        n_test_defect=n_test_defect,
        n_val=n_val,
    )
    if is_generated(folder, params):
        return
    log.info("Generating the %s texture set into %s (once)", category, folder)
    seed = TEXTURES.index(category)
    rng = random.Random(seed)
    image = _texture(category)
    split_row = image.shape[0] * 5 // 8  # train crops above, test crops below
    if image.shape[0] - split_row < crop_size:
        raise ValueError(f"crop_size {crop_size} is too large for the {image.shape[0] - split_row}-row test band")
    train = _crops(image, (0, split_row), crop_size, n_train, rng)
    test = _crops(image, (split_row, image.shape[0]), crop_size, n_test_good + n_test_defect, rng)
    val = _crops(image, (split_row, image.shape[0]), crop_size, n_val, rng)  # drawn last: train and test as before
    write_with_defects(folder, params, train, test[:n_test_good], test[n_test_good:], seed, val)


def is_generated(folder: Path, params: dict) -> bool:
    stamp = folder / "params.json"
    return stamp.is_file() and json.loads(stamp.read_text()) == params


def write_with_defects(
    folder: Path,
    params: dict,
    train: list[np.ndarray],
    good: list[np.ndarray],
    to_defect: list[np.ndarray],
    seed: int,
    val: list[np.ndarray] | None = None,
) -> None:
    """Write ``train``, ``good`` (and ``val`` into ``val/good``) as they are and ``to_defect`` with
    one procedural defect each (the kinds in turn) and its mask, in the MVTec AD layout
    (:func:`write_layout`)."""
    random.seed(seed)  # defect_synthesis draws from the global generators
    np.random.seed(seed)
    generators = {kind: _defect_generator(kind, good[0].shape[0] if good else train[0].shape[0]) for kind in DEFECTS}
    defects = []
    for i, image in enumerate(to_defect):
        kind = DEFECTS[i % len(DEFECTS)]
        for _ in range(20):  # a defect can land (almost) nowhere; draw again
            result = generators[kind].apply(image)
            if result.anomaly_mask.sum() / 255 >= 16:
                break
        defects.append((kind, result.image, ((result.anomaly_mask > 0) * 255).astype(np.uint8)))
    write_layout(folder, params, train, good, defects, val)


def save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_layout(
    folder: Path,
    params: dict,
    train: list[np.ndarray],
    good: list[np.ndarray],
    defects: list[tuple[str, np.ndarray, np.ndarray]],
    val: list[np.ndarray] | None = None,
) -> None:
    """Write a generated set in the MVTec AD layout: ``train`` into ``train/good``, ``good`` into
    ``test/good``, ``val`` into ``val/good`` and each (kind, image, mask) of ``defects`` into
    ``test/<kind>/<i>.png`` and ``ground_truth/<kind>/<i>_mask.png`` (``i`` its place in the list);
    ``params.json`` last, so an interrupted generation is redone (:func:`is_generated`)."""
    for i, image in enumerate(train):
        save_png(image, folder / "train" / "good" / f"{i:03d}.png")
    for i, image in enumerate(good):
        save_png(image, folder / "test" / "good" / f"{i:03d}.png")
    for i, image in enumerate(val or []):
        save_png(image, folder / "val" / "good" / f"{i:03d}.png")
    for i, (kind, image, mask) in enumerate(defects):
        save_png(image, folder / "test" / kind / f"{i:03d}.png")
        save_png(mask, folder / "ground_truth" / kind / f"{i:03d}_mask.png")
    (folder / "params.json").write_text(json.dumps(params))


class TexturesDataModule(FolderDataModule):
    """Textures with synthetic defects and pixel masks, generated on first use (a few seconds)."""

    name = "textures"
    categories = TEXTURES
    default_category = "brick"

    def __init__(
        self,
        root: str | None = None,
        category: str | None = None,
        crop_size: int = 128,
        n_train: int = 160,
        n_test_good: int = 40,
        n_test_defect: int = 60,
        n_val: int = 16,
        **kwargs,
    ) -> None:
        self.generation = dict(
            crop_size=crop_size, n_train=n_train, n_test_good=n_test_good, n_test_defect=n_test_defect, n_val=n_val
        )
        super().__init__(root=root or "~/.cache/adkd/textures", category=category, **kwargs)

    has_masks = True

    def prepares_data(self) -> bool:
        return True

    def prepare_data(self) -> None:
        generate(self.path, self.category, **self.generation)
