"""A second embedded pixel-level set, from other real images than the textures: ELPV's defect-free
solar cells (real electroluminescence images) with the same procedural defects and pixel masks
(scratch, crack, stain, pit), in the MVTec AD layout.

Generated once, deterministically, into ``root``/<category>. The cells follow the ELPV split
(:mod:`adkd.data.elpv`): training images come from its training normals, test images (good and
with a defect) from the normals it holds out of training (its test split's, topped up from its
validation split's where those are too few: mono has 98 for the 100 asked), so no test cell was
seen in training. Cells with real defects are left out: their defects carry no masks.
"""

from __future__ import annotations

import logging
import random

import numpy as np
from PIL import Image

from adkd.data.elpv import ELPVDataModule
from adkd.data.textures import FORMAT_VERSION, TexturesDataModule, is_generated, write_with_defects

log = logging.getLogger(__name__)


def _cell(path, size: int) -> np.ndarray:  # noqa: ANN001
    grey = Image.open(path).convert("L").resize((size, size), Image.BILINEAR)
    return np.repeat(np.asarray(grey)[..., None], 3, axis=2)


class CellsDataModule(TexturesDataModule):
    """ELPV's normal cells with procedural defects and masks (mono: 160 train, 40 + 60 test)."""

    name = "cells"
    categories = ELPVDataModule.categories
    default_category = "mono"

    def __init__(self, root: str | None = None, **kwargs) -> None:
        # Validation: val_fraction of the training cells, other cells of the same production, never
        # trained on (the textures need a val/ of their own: their crops overlap).
        super().__init__(root=root or "~/.cache/adkd/cells", n_val=0, **kwargs)

    def prepare_data(self) -> None:
        params = dict(version=FORMAT_VERSION, source="elpv", category=self.category, **self.generation)
        if is_generated(self.path, params):
            return
        log.info("Generating the %s cells set into %s (once)", self.category, self.path)
        size, n_train = self.generation["crop_size"], self.generation["n_train"]
        n_good, n_defect = self.generation["n_test_good"], self.generation["n_test_defect"]
        train, test = cell_sources(self.category, n_train, n_good + n_defect)
        test_images = [_cell(p, size) for p in test]
        write_with_defects(
            self.path, params, [_cell(p, size) for p in train], test_images[:n_good], test_images[n_good:], 7
        )


def cell_sources(category: str, n_train: int, n_test: int) -> tuple[list, list]:
    """The ELPV normal cells a cells set is made of: ``n_train`` of ELPV's training normals and
    ``n_test`` of the normals ELPV holds out of training (its test split's first, then its
    validation split's), drawn with a fixed seed per category."""
    elpv = ELPVDataModule(category=category)
    train = [r.image_path for r in elpv.records("train")]
    test = [r.image_path for r in elpv.records("test") if r.gt_label == 0]
    spare = [r.image_path for r in elpv.records("validation") if r.gt_label == 0]
    if len(train) < n_train or len(test) + len(spare) < n_test:
        raise ValueError(
            f"ELPV {category} has {len(train)} training and {len(test) + len(spare)} held-out normal cells; "
            f"asked for {n_train} and {n_test}"
        )
    rng = random.Random(ELPVDataModule.categories.index(category))
    train = rng.sample(train, n_train)
    if len(test) >= n_test:
        return train, rng.sample(test, n_test)  # (the sets made before the validation split stay as they were)
    return train, rng.sample(test, len(test)) + rng.sample(spare, n_test - len(test))
