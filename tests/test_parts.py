"""The embedded ``parts`` set (adkd/data/parts.py): rendered objects with structural defects."""

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from scipy.stats import rankdata

from adkd.data.parts import DEFECTS, PARTS, PartsDataModule, render

SMALL = dict(n_train=4, n_test_good=2, n_test_defect=6, n_val=2)


def _png(path) -> np.ndarray:  # noqa: ANN001
    return np.asarray(Image.open(path))


def test_generation_is_deterministic_with_the_textures_layout(tmp_path):
    a = PartsDataModule(root=str(tmp_path / "a"), category="gear", **SMALL)
    b = PartsDataModule(root=str(tmp_path / "b"), category="gear", **SMALL)
    a.prepare_data()
    b.prepare_data()
    files = sorted(p.relative_to(a.path) for p in a.path.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b.path) for p in b.path.rglob("*") if p.is_file())
    assert all((a.path / f).read_bytes() == (b.path / f).read_bytes() for f in files)
    assert sum(f.suffix == ".png" for f in files) == 4 + 2 + 2 + 6 + 6  # images, validation images, masks
    records = a.checked_records()
    assert len(records["train"]) == 4 and [r.image_path.parent.parent.name for r in records["val"]] == ["val"] * 2
    test = a.records("test")
    assert [r.defect for r in test if r.gt_label] == sorted(DEFECTS * 2)
    assert all(r.mask_path is None for r in test if not r.gt_label)
    assert not (a.path / "ground_truth" / "good").exists()
    assert all(r.mask_path.name == f"{r.image_path.stem}_mask.png" for r in test if r.gt_label)
    for i in range(6):  # the files are the renders, the kinds in turn
        kind = DEFECTS[i % 3]
        assert np.array_equal(_png(a.path / "test" / kind / f"{i:03d}.png"), render("gear", "defect", i, kind).image)
    # Each image has a generator of its own: more training images leave the others as they were.
    c = PartsDataModule(root=str(tmp_path / "c"), category="gear", **{**SMALL, "n_train": 5})
    c.prepare_data()
    assert all((a.path / f).read_bytes() == (c.path / f).read_bytes() for f in files if f.name != "params.json")
    # The stamp is written last: a generation without one is redone.
    (a.path / "params.json").unlink()
    (a.path / "train" / "good" / "003.png").unlink()
    a.prepare_data()
    assert (a.path / "train" / "good" / "003.png").read_bytes() == (b.path / "train" / "good" / "003.png").read_bytes()


@pytest.mark.parametrize("category", PARTS)
def test_a_mask_is_exactly_where_the_image_differs_from_its_intact_twin(category):
    """The twin is the same part (pose, lighting, grain, noise) without the defect. The mask is
    the pixels the defect changed by more than CHANGE_LEVELS, dilated by one pixel: every pixel that
    differs is in it, and every pixel of it is next to one that differs."""
    for i in range(9):
        kind = DEFECTS[i % 3]
        done = render(category, "defect", i, kind)
        mask, differs = done.mask > 0, done.image != done.intact
        assert mask.sum() >= 16, (category, kind, i)
        assert not (differs & ~mask).any()
        assert not (mask & ~ndimage.binary_dilation(differs, np.ones((3, 3), bool))).any()
        assert set(np.unique(done.mask)) == {0, 255}
    good = render(category, "good", 0)
    assert good.mask is None and good.image is good.intact


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    ranks = rankdata(scores)
    positives = labels.sum()
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * (len(labels) - positives)))


@pytest.mark.parametrize("category", PARTS)
def test_normal_parts_vary_and_a_defect_has_the_grey_levels_of_normal_parts(category):
    normal = np.stack([render(category, "train", i).image for i in range(24)])
    pairs = [np.abs(normal[i].astype(int) - normal[j]).mean() for i in range(4) for j in range(i + 1, 4)]
    assert min(pairs) > 3  # pose, lighting, grain and noise: no two alike
    defects = [render(category, "defect", i, DEFECTS[i % 3]) for i in range(12)]
    for done in defects:  # the defect's pixels (but for grain and noise extremes) in its intact twin's range
        low, high = np.percentile(done.image[done.mask > 0], [1, 99])
        assert done.intact.min() <= low and high <= done.intact.max()
    # A scorer that sees grey levels only (how rare a pixel's value is among the normal images) is
    # little better than chance on the defects' pixels, the part's own material and background out
    # of place: on the whole sets 0.66 (washer), 0.47 (mesh), 0.66 (gear), above 0.5 for the edges a
    # defect adds (their blended grey levels are rarer than the flat ones). On the textures' and
    # cells' marks it is 0.97 (brick) and 0.88 (mono).
    counts = np.bincount(normal.ravel(), minlength=256) + 1
    rarity = -np.log(counts / counts.sum())
    labels = np.concatenate([(d.mask > 0).ravel() for d in defects])
    scores = np.concatenate([rarity[d.image].ravel() for d in defects])
    assert _auroc(labels, scores) < 0.8


def test_the_parts_config_loads_through_hydra(tmp_path):
    from hydra.utils import instantiate

    from adkd.data.unified import datamodule
    from adkd.training.config import compose

    overrides = [
        "dataset=parts",
        f"dataset.root={tmp_path / 'parts'}",
        "dataset.n_train=4",
        "dataset.n_val=2",
        "dataset.n_test_good=2",
        "dataset.n_test_defect=3",
        "batch_size=4",
    ]
    cfg = compose([*overrides, "category=mesh"], tmp_path / "run")
    assert (cfg.category, cfg.image_size, cfg.dataset.size) == ("mesh", 128, 128)
    assert cfg.max_epochs == compose(["dataset=textures"], tmp_path / "run").max_epochs  # the demo budget
    dm = instantiate(cfg.dataset)
    assert isinstance(dm, PartsDataModule) and dm.path == tmp_path / "parts" / "mesh"
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 128, 128) and 0 <= batch["image"].min() and batch["image"].max() <= 1
    assert len(dm.val_set) == 2
    dm.setup("test")
    test = [b for b in dm.test_dataloader()]
    assert sum(int(b["gt_label"].sum()) for b in test) == 3 and sum(int(b["gt_mask"].sum() > 0) for b in test) >= 1
    default = compose(["dataset=parts"], tmp_path / "run")
    assert default.category == "washer" and default.dataset.root == "~/.cache/adkd/parts"
    unified = datamodule(compose([*overrides, "category=all"], tmp_path / "run").dataset)
    assert unified.categories == PARTS
