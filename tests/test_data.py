import shutil

import pytest
import torch

from adkd.data.elpv import ELPVDataModule
from adkd.data.folder import FolderDataModule, MVTecADDataModule
from adkd.data.textures import TexturesDataModule
from adkd.errors import ConfigError, DatasetNotFoundError, ImageReadError


def test_folder_layout_samples(tiny_mvtec):
    dm = FolderDataModule(root=str(tiny_mvtec), category="widget", image_size=16, batch_size=4)
    dm.setup()
    assert dm.has_masks
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (11, 1, 8)
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16)
    assert batch["gt_mask"].shape == (4, 1, 16, 16)
    labels = torch.cat([b["gt_label"] for b in dm.test_dataloader()])
    masks = torch.cat([b["gt_mask"] for b in dm.test_dataloader()])
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert masks[:4].sum() == 0 and all(m.sum() > 0 for m in masks[4:])


def test_validation_comes_from_training_images_only(tiny_mvtec):
    dm = FolderDataModule(root=str(tiny_mvtec), category="widget", val_fraction=0.25)
    dm.setup()
    val = {r.image_path for r in dm.val_set.records}
    assert val and all("/train/good/" in str(p) for p in val)
    assert not val & {r.image_path for r in dm.train_set.records}


def test_missing_mvtec_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        MVTecADDataModule(root=str(tmp_path / "nowhere"), category="bottle")
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "bottle") in message
    assert "ground_truth/<defect>" in message and "dataset.download=true" in message


def test_wrong_category_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="Valid categories: bottle, cable, capsule"):
        MVTecADDataModule(root=str(tmp_path), category="bottel")


def test_the_data_of_a_whole_sweep_is_checked_before_its_first_run(tmp_path, capsys):
    """``adkd check`` (what the experiment scripts run first): every run of every sweep
    composed as ``adkd.run -m`` composes it, each dataset and category checked once, and every problem
    (a missing category, an unknown one, a missing folder, a misspelt key) listed in one go."""
    from adkd.cli import main as adkd
    from adkd.training.data_check import sweep_runs
    from tests import replicas

    assert sweep_runs(["category=bottle,cable", "seed=range(2)", "logger=none"]) == [
        ["category=bottle", "seed=0", "logger=none"],
        ["category=bottle", "seed=1", "logger=none"],
        ["category=cable", "seed=0", "logger=none"],
        ["category=cable", "seed=1", "logger=none"],
    ]
    root = replicas.mvtec_ad(tmp_path / "mvtec", ("bottle", "cable"))
    mvtec = ["dataset=mvtec", f"dataset.root={root}", "category=bottle,cable", "seed=0,1"]
    assert adkd(["check", *mvtec]) == 0  # four runs, two datasets to check
    assert capsys.readouterr().out.splitlines() == [
        f"mvtec/{c}: 4 training, 0 validation (no validation images: no thresholds), 5 test images (3 anomalous) "
        f"in {root}"
        for c in ("bottle", "cable")
    ]
    absent = tmp_path / "absent"
    assert (
        adkd(
            [
                "check",
                *mvtec[:2],
                "category=bottle,capsule,bottel",
                "--",
                "dataset=ksdd2",
                f"dataset.root={absent}",
                "--",
                "dataset=ksdd",
                "dataset.rot=x",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("error: 4 problems with the data of the runs to come:")
    assert f"mvtec/capsule: MVTec AD category 'capsule' not found at {root / 'capsule'}" in err
    assert "mvtec/bottel: Unknown category 'bottel' for dataset mvtec. Valid categories: bottle, cable" in err
    assert f"ksdd2/ksdd2: KolektorSDD2 not found at {absent}" in err
    assert "dataset=ksdd dataset.rot=x: Could not override 'dataset.rot'" in err


def test_every_unusable_file_is_reported_at_once_before_training(tiny_mvtec, tmp_path):
    from PIL import Image

    from adkd.errors import DataCheckError

    root = tmp_path / "copy"
    shutil.copytree(tiny_mvtec, root)
    cat = root / "widget"
    (cat / "test" / "good" / "001.png").write_bytes(b"not a png")
    (cat / "train" / "good" / "005.png").write_bytes(b"")
    Image.new("L", (10, 10)).save(cat / "ground_truth" / "spot" / "002_mask.png")
    (cat / "ground_truth" / "spot" / "003_mask.png").unlink()
    (cat / "test" / ".ipynb_checkpoints").mkdir()  # hidden: not a defect class
    shutil.copy(cat / "test" / "good" / "000.png", cat / "test" / ".ipynb_checkpoints" / "000.png")
    (cat / "train" / "good" / ".DS_Store").write_bytes(b"\0\0")
    dm = FolderDataModule(root=str(root), category="widget", image_size=16)
    with pytest.raises(DataCheckError) as err:
        dm.setup("fit")  # the test split is checked before the first training step too
    message = str(err.value)
    assert "4 of 20 files cannot be used" in message
    assert "001.png is not a readable image" in message
    assert "005.png is empty (0 bytes)" in message
    assert "002_mask.png is 10x10 but its image is 32x32" in message
    assert "003_mask.png (for 003.png) does not exist" in message
    assert ".ipynb_checkpoints" not in message and ".DS_Store" not in message


def test_an_empty_training_folder_and_a_one_class_test_split(tiny_mvtec, tmp_path, caplog):
    import logging

    from adkd.errors import DataCheckError

    root = tmp_path / "copy"
    shutil.copytree(tiny_mvtec, root)
    shutil.rmtree(root / "widget" / "test" / "spot")
    with caplog.at_level(logging.WARNING):
        FolderDataModule(root=str(root), category="widget").setup("fit")
    assert "the test split holds only normal images" in caplog.text
    for image in (root / "widget" / "train" / "good").iterdir():
        image.unlink()
    with pytest.raises(DataCheckError, match="no training images"):
        FolderDataModule(root=str(root), category="widget").setup("fit")


def test_an_image_that_fails_to_decode_is_named(tiny_mvtec, tmp_path):
    from adkd.data.dataset import read_image

    broken = tmp_path / "truncated.png"
    broken.write_bytes((tiny_mvtec / "widget" / "test" / "good" / "000.png").read_bytes()[:200])
    with pytest.raises(ImageReadError, match="truncated.png"):
        read_image(broken)


@pytest.mark.parametrize(
    ("category", "train", "validation", "test"),
    [("mono", 441, (49, 162), (98, 324)), ("poly", 690, (77, 210), (153, 420))],
)
def test_elpv_split_is_fixed_and_disjoint(category, train, validation, test):
    dm = ELPVDataModule(category=category)
    tr, va, te = dm.records("train"), dm.records("validation"), dm.records("test")
    assert len(tr) == train
    for split, (normal, anomalous) in ((va, validation), (te, test)):
        assert (sum(r.gt_label == 0 for r in split), sum(r.gt_label for r in split)) == (normal, anomalous)
    paths = [{r.image_path for r in split} for split in (tr, va, te)]
    assert not paths[0] & paths[1] and not paths[0] & paths[2] and not paths[1] & paths[2]
    assert {r.defect for r in va} == {r.defect for r in te}  # every defect level in both
    assert not dm.has_masks
    assert ELPVDataModule(category=category).records("test") == te  # deterministic
    assert dm.labelled_validation() == va


def test_evaluate_validation_scores_the_labelled_validation_split_only():
    dm = ELPVDataModule(category="mono", evaluate="validation", limit_train=4)
    records = dm.checked_records()
    assert records["test"] == dm.records("validation") == records["calibration"]
    assert not {r.image_path for r in records["test"]} & {r.image_path for r in dm.records("test")}
    with pytest.raises(ConfigError, match="evaluate must be 'test' or 'validation'"):
        ELPVDataModule(category="mono", evaluate="val")


def test_evaluate_validation_without_labelled_anomalies_says_what_it_needs(tiny_mvtec):
    dm = FolderDataModule(root=str(tiny_mvtec), category="widget", evaluate="validation")
    with pytest.raises(ConfigError, match="needs a labelled validation split with anomalous images"):
        dm.checked_records()


def test_textures_generation_is_deterministic(tmp_path):
    kwargs = dict(category="gravel", crop_size=64, n_train=3, n_test_good=2, n_test_defect=4, n_val=2)
    a = TexturesDataModule(root=str(tmp_path / "a"), **kwargs)
    b = TexturesDataModule(root=str(tmp_path / "b"), **kwargs)
    a.prepare_data()
    b.prepare_data()
    files_a = sorted(p.relative_to(a.path) for p in a.path.rglob("*.png"))
    assert len(files_a) == 3 + 2 + 4 + 4 + 2  # images, masks, validation images
    records = a.checked_records()  # validation: val/good, not held out of the training crops
    assert len(records["train"]) == 3 and [r.image_path.parent.parent.name for r in records["val"]] == ["val"] * 2
    for rel in files_a:
        assert (a.path / rel).read_bytes() == (b.path / rel).read_bytes()
    test = a.records("test")
    assert sum(r.gt_label for r in test) == 4 and {r.defect for r in test} == {
        "good",
        "scratch",
        "crack",
        "stain",
        "pit",
    }


def test_images_come_out_in_unit_range_as_their_pixels_say(tmp_path):
    """8-bit, 16-bit (PIL's I;16 and I), greyscale and palette images all read as the same RGB."""
    import numpy as np
    from PIL import Image

    from adkd.data.dataset import read_image

    grey = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))  # 0..240
    paths = {"l8": tmp_path / "l8.png", "i16": tmp_path / "i16.png", "p": tmp_path / "p.png"}
    Image.fromarray(grey).save(paths["l8"])
    Image.fromarray(grey.astype(np.uint16) * 257).save(paths["i16"])  # 16-bit PNG
    Image.fromarray(grey).convert("P").save(paths["p"])
    assert Image.open(paths["i16"]).mode.startswith("I")
    for name, path in paths.items():
        rgb = np.asarray(read_image(path))
        assert rgb.shape == (16, 16, 3), name
        assert np.abs(rgb[..., 0].astype(int) - grey).max() <= 1, name  # not clipped to white


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    import numpy as np
    from PIL import Image

    from adkd.data.dataset import read_image

    wide = np.zeros((8, 24, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    Image.fromarray(wide).save(tmp_path / "r.jpg", exif=exif)
    assert read_image(tmp_path / "r.jpg").size == (8, 24)


def test_synthetic_anomalies_come_from_the_loader(tiny_mvtec):
    from adkd.data.synthesis import AnomalySynthesizer

    dm = FolderDataModule(root=str(tiny_mvtec), category="widget", image_size=32, batch_size=11, val_fraction=0.25)
    dm.setup("fit")
    dm.set_synthesizer(AnomalySynthesizer(probability=1.0))
    batch = next(iter(dm.train_dataloader()))
    assert batch["synthetic"].all() and batch["gt_label"].tolist() == [1] * len(batch["image"])
    assert all(m.sum() > 0 for m in batch["gt_mask"])
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1
    first, second = dm.val_set[0], dm.val_set[0]  # validation anomalies are the same every epoch
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["gt_mask"], second["gt_mask"])
    assert "clean" not in batch  # only a synthesizer with keep_clean hands on the image before its anomaly
    dm.set_synthesizer(AnomalySynthesizer(probability=1.0, keep_clean=True))
    batch = next(iter(dm.train_dataloader()))
    inside = batch["gt_mask"].bool().expand_as(batch["image"])
    assert torch.equal(batch["clean"][~inside], batch["image"][~inside])  # the same image outside the anomaly
    assert not torch.equal(batch["clean"][inside], batch["image"][inside])


def test_a_decompression_bomb_sized_header_is_refused_by_name(tiny_mvtec, monkeypatch):
    from PIL import Image

    from adkd.errors import DataCheckError

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the 32x32 images now declare "too many" pixels
    with pytest.raises(DataCheckError, match="000.png declares more than 100 pixels"):
        FolderDataModule(root=str(tiny_mvtec), category="widget").setup("fit")


@pytest.mark.parametrize("category", ["mono", "poly"])
def test_the_cells_sets_draw_test_cells_that_elpv_held_out_of_training(category):
    """conf/dataset/cells.yaml's 160 training and 40 + 60 test cells, for both categories: mono has
    98 held-out normals in ELPV's test split, so two come from its validation split."""
    from adkd.data.cells import cell_sources
    from adkd.data.elpv import ELPVDataModule

    elpv = ELPVDataModule(category=category)
    trained = {r.image_path for r in elpv.records("train")}
    test_normals = {r.image_path for r in elpv.records("test") if r.gt_label == 0}
    train, test = cell_sources(category, 160, 100)
    assert len(set(train)) == 160 and set(train) <= trained
    assert len(set(test)) == 100 and not set(test) & trained
    assert len(set(test) - test_normals) == (2 if category == "mono" else 0)
    assert (train, test) == cell_sources(category, 160, 100)  # the same set on every machine


def test_the_data_check_checks_each_category_of_a_category_all_sweep(tmp_path, capsys):
    from adkd.cli import main as adkd
    from tests import replicas

    root = replicas.mvtec_ad(tmp_path / "mvtec", ("bottle", "cable"))
    assert adkd(["check", "dataset=folder", f"dataset.root={root}", "category=all"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"folder/all ({c}): 4 training, 0 validation (no validation images: no thresholds), 5 test images "
        f"(3 anomalous) in {root}"
        for c in ("bottle", "cable")
    ]
    broken = next((root / "cable" / "test").rglob("*.png"))
    broken.write_bytes(b"")
    assert adkd(["check", "dataset=folder", f"dataset.root={root}", "category=all"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 1 problems with the data of the runs to come:")
    assert f"folder/all (cable): folder/cable: 1 of 9 files cannot be used:\n  - {broken} is empty (0 bytes)" in err
