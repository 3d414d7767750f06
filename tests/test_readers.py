"""Every benchmark reader against a reference reader, on tiny copies of the released layouts
(tests/replicas.py): anomalib 2.7's dataset classes where anomalib reads the dataset, the authors'
own loader's rules for KolektorSDD2. A record is (image path, label, mask path of an anomalous
image, defect type); masks anomalib gives normal images (all-zero files, or files that do not exist)
are not compared, since adkd gives normal images none. Where adkd departs from the reference on
purpose, the test says how and checks the departure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adkd.data.records import Record
from tests import replicas


def ours(records: list[Record]) -> list[tuple]:
    return sorted((str(r.image_path), r.gt_label, str(r.mask_path) if r.gt_label else None, r.defect) for r in records)


def theirs(samples, defect=lambda label: label) -> list[tuple]:  # noqa: ANN001
    """anomalib's samples DataFrame as records; ``defect`` maps its label column to adkd's defect type."""
    return sorted(
        (
            str(Path(row.image_path)),
            int(row.label_index),
            str(Path(row.mask_path)) if row.label_index else None,
            defect(row.label),
        )
        for row in samples.itertuples()
    )


def held_out_union(datamodule) -> None:  # noqa: ANN001
    """adkd's one departure shared by these readers: validation images held out of the training
    split (``val_fraction``). Together they are the training split, and no image is in both."""
    records = datamodule.checked_records()  # also runs the data check over every file
    fit, val = set(records["train"]), set(records["val"])
    assert fit | val == set(datamodule.records("train")) and not fit & val and val


def test_mvtec_ad_reads_as_anomalib(tmp_path):
    from anomalib.data.datasets.image.mvtecad import MVTecADDataset

    from adkd.data.folder import MVTecADDataModule

    root = replicas.mvtec_ad(tmp_path)
    dm = MVTecADDataModule(root=str(root), category="bottle", val_fraction=0.3)
    for split, (n, n_anomalous) in (("train", (4, 0)), ("test", (5, 3))):
        reference = theirs(MVTecADDataset(root=root, category="bottle", split=split).samples)
        assert ours(dm.records(split)) == reference
        assert (len(reference), sum(r[1] for r in reference)) == (n, n_anomalous)
    held_out_union(dm)


def test_mpdd_reads_as_anomalib(tmp_path):
    from anomalib.data.datasets.image.mpdd import MPDDDataset

    from adkd.data.mpdd import MPDDDataModule

    root = replicas.mpdd(tmp_path)
    dm = MPDDDataModule(root=str(root), category="bracket_black", val_fraction=0.3)
    for split, n in (("train", 3), ("test", 4)):
        reference = theirs(MPDDDataset(root=root, category="bracket_black", split=split).samples)
        assert ours(dm.records(split)) == reference and len(reference) == n
    assert {r.defect for r in dm.records("test")} == {"good", "hole", "scratches"}
    held_out_union(dm)


def test_visa_reads_the_split_file_as_anomalib_resorts_it(tmp_path):
    """anomalib copies VisA into an MVTec AD layout (visa_pytorch/, masks rewritten as 0/255, defect
    type "bad"); adkd reads the release in place (defect type "anomaly", masks as released, any
    non-zero value anomalous). Compared by file name, and mask pixels by what each reads."""
    from anomalib.data.datamodules.image.visa import Visa
    from anomalib.data.datasets.image.visa import VisaDataset

    from adkd.data.dataset import read_mask
    from adkd.data.visa import VisADataModule

    root = replicas.visa(tmp_path / "visa")
    Visa(root=root, category="candle").prepare_data()  # anomalib's re-sorting of the released files
    dm = VisADataModule(root=str(root), category="candle", val_fraction=0.3)

    def by_name(rows: list[tuple]) -> list[tuple]:
        return sorted((Path(i).name, label, Path(m).name if m else None, d) for i, label, m, d in rows)

    for split, n in (("train", 3), ("test", 4)):
        samples = VisaDataset(root=root / "visa_pytorch", category="candle", split=split).samples
        reference = theirs(samples, defect=lambda label: "anomaly" if label == "bad" else label)
        assert by_name(ours(dm.records(split))) == by_name(reference) and len(reference) == n
    anomalous = [r for r in dm.records("test") if r.gt_label]
    copies = {Path(p).name: Path(p) for p in samples.mask_path if p}
    assert {np.unique(np.asarray(Image.open(r.mask_path))).max() for r in anomalous} == {1, 2}  # defect ids
    for record in anomalous:
        their_mask = np.asarray(Image.open(copies[record.mask_path.name]).convert("L")) > 0
        assert np.array_equal(read_mask(record.mask_path, (16, 16)), their_mask) and their_mask.any()
    held_out_union(dm)


def authors_ksdd2(root: Path, kind: str) -> list[tuple]:
    """KolektorSDD2 as the authors' loader reads it (vicoslab/mixed-segdec-net-comind2021,
    ``data/input_ksdd2.py``): each sample ``<part>`` of a split is ``<root>/<split>/<part>.png`` with
    ``<part>_GT.png``, positive when the mask read as greyscale has a pixel above 0. Their split files
    (pickles of the parts, by number of segmented positives) list every image of the folder, which
    is what is listed here."""
    import cv2

    rows = []
    for mask in sorted((root / kind).glob("*_GT.png")):
        image = mask.with_name(mask.name.replace("_GT.png", ".png"))
        positive = bool(cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE).max() > 0)
        rows.append((str(image), int(positive), str(mask) if positive else None, "defect" if positive else "good"))
    return rows


def test_ksdd2_reads_as_its_authors_loader(tmp_path):
    """The unsupervised protocol trains on the training folder's negatives only; the authors'
    supervised loader also trains on its positives (here 10001)."""
    from adkd.data.ksdd2 import KolektorSDD2DataModule

    root = replicas.ksdd2(tmp_path)
    dm = KolektorSDD2DataModule(root=str(root), val_fraction=0.3)
    train, test = authors_ksdd2(root, "train"), authors_ksdd2(root, "test")
    assert ours(dm.records("test")) == test and [r[1] for r in test] == [1, 0, 1, 0]
    assert ours(dm.records("train")) == [r for r in train if r[1] == 0] and len(train) == 4
    assert [Path(r[0]).stem for r in train if r[1]] == ["10001"]
    held_out_union(dm)


def test_ksdd_split_is_anomalibs_less_the_image_its_authors_leave_out(tmp_path):
    from anomalib.data.datasets.image.kolektor import KolektorDataset

    from adkd.data.ksdd import KolektorSDDDataModule

    root = replicas.ksdd(tmp_path)
    dm = KolektorSDDDataModule(root=str(root), val_fraction=0.3)
    left_out = str(root / "kos21" / "Part7.jpg")
    named = {"Good": "good", "Bad": "defect"}
    for split in ("train", "test"):
        reference = theirs(KolektorDataset(root=root, split=split).samples, defect=named.get)
        assert ours(dm.records(split)) == [r for r in reference if r[0] != left_out]
    everything = ours(dm.records("train") + dm.records("test"))
    assert len(everything) == 23 and left_out not in {r[0] for r in everything}  # 24 images, one left out
    assert sorted(Path(r[0]).parent.name + "/" + Path(r[0]).stem for r in everything if r[1]) == sorted(
        replicas.KSDD_DEFECTIVE
    )
    assert {r[1] for r in ours(dm.records("train"))} == {0}
    assert ours(KolektorSDDDataModule(root=str(root)).records("test")) == ours(dm.records("test"))  # fixed split
    held_out_union(dm)


def test_ksdd_split_draws_as_scikit_learn(tmp_path):
    """adkd draws anomalib's split without scikit-learn: the same permutation, for any count."""
    from sklearn.model_selection import train_test_split

    from adkd.data.ksdd import unsupervised_split

    for n in (5, 21, 347):
        records = [Record(tmp_path / f"{i:04d}.jpg", 0) for i in range(n)]
        train, test = unsupervised_split(records)
        their_train, their_test = train_test_split(records, train_size=0.8, random_state=42)
        assert train == sorted(their_train, key=lambda r: str(r.image_path))
        assert test == sorted(their_test, key=lambda r: str(r.image_path))


@pytest.mark.parametrize("product", ["01", "02", "03"])
def test_btad_reads_the_release_and_anomalibs_converted_copy(tmp_path, product):
    """On the release, anomalib names ``<stem>.png`` masks for every product, and 03's are ``.bmp``:
    adkd names the file that exists. On the copy anomalib makes after downloading (every ``.bmp``
    rewritten as ``.png``), both read the same."""
    from anomalib.data.datasets.image.btech import BTechDataset

    from adkd.data.btad import BTADDataModule

    root = replicas.btad(tmp_path / "btad")
    named = {"ok": "good", "ko": "ko"}
    for split in ("train", "test"):
        rows = ours(BTADDataModule(root=str(root), category=product).records(split))
        reference = theirs(BTechDataset(root=root, category=product, split=split).samples, defect=named.get)
        assert [(i, label, d) for i, label, _, d in rows] == [(i, label, d) for i, label, _, d in reference]
        assert all(Path(m).is_file() for _, label, m, _ in rows if label)
        if product == "03" and split == "test":
            assert {Path(m).suffix for _, _, m, _ in reference if m} == {".png"}  # anomalib's: no such files
            assert {Path(m).suffix for _, _, m, _ in rows if m} == {".bmp"}
        else:
            assert rows == reference
    assert [label for _, label, _, _ in rows] == [1, 1, 0]  # test/ko/0000, 0001, test/ok/0000

    for bmp in (root / product).rglob("*.bmp"):  # what anomalib's BTech.prepare_data does after a download
        Image.open(bmp).save(bmp.with_suffix(".png"))
        bmp.unlink()
    dm = BTADDataModule(root=str(root), category=product, val_fraction=0.3)
    for split in ("train", "test"):
        reference = theirs(BTechDataset(root=root, category=product, split=split).samples, defect=named.get)
        assert ours(dm.records(split)) == reference
    held_out_union(dm)


def test_mvtec_ad2_reads_as_anomalib_with_its_own_validation_split(tmp_path):
    """Validation is the dataset's ``validation/good`` (anomalib's "val" split), not held out of the
    training images: adkd trains on every training image."""
    from anomalib.data.datasets.image.mvtecad2 import MVTecAD2Dataset

    from adkd.data.mvtec_ad2 import MVTecAD2DataModule

    root = replicas.mvtec_ad2(tmp_path)
    dm = MVTecAD2DataModule(root=str(root), category="can")
    for split, ours_split, n in (("train", "train", 3), ("val", "validation", 2), ("test", "test", 3)):
        reference = theirs(MVTecAD2Dataset(root=root, category="can", split=split).samples)
        assert ours(dm.records(ours_split)) == reference and len(reference) == n
    for split in ("test_private", "test_private_mixed"):
        kind = split.removeprefix("test_")
        samples = MVTecAD2Dataset(root=root, category="can", split="test", test_type=kind).samples
        assert sorted(map(str, dm.private_images(split))) == sorted(str(Path(p)) for p in samples.image_path)
        assert set(samples.label_index) == {-1}  # no labels: the server scores them
    records = dm.checked_records()
    assert records["train"] == dm.records("train")
    assert records["val"] == records["calibration"] == dm.records("validation")
    assert records["test"] == dm.records("test")


def test_mvtec_loco_reads_as_anomalib_file_by_file_and_mask_by_mask(tmp_path):
    """Images, labels, defect kinds (anomalib's label column: the test folder) and every region's
    mask file as anomalib's ``MVTecLOCODataset`` lists them; the merged mask pixel-equal to anomalib's
    ``gt_mask`` (any non-zero pixel of any region file). Validation is the dataset's
    ``validation/good`` (anomalib's "val" split), not held out of the training images.

    Departures, on purpose: anomalib pairs the sorted mask folders with the sorted anomalous images
    by position, so a missing folder shifts every later image's masks (or stops with a mismatch);
    adkd finds each image's folder by its name and refuses an image without one."""
    from anomalib.data.datasets.image.mvtec_loco import MVTecLOCODataset

    from adkd.data.dataset import AnomalyDataset
    from adkd.data.mvtec_loco import MVTecLOCODataModule
    from adkd.errors import DataCheckError

    root = replicas.mvtec_loco(tmp_path / "loco")
    dm = MVTecLOCODataModule(root=str(root), category="breakfast_box")

    def anomalib_loco(split: str) -> MVTecLOCODataset:
        """anomalib 2.7 puts each image's list of masks into a column of strings, which pandas 3
        refuses: read with pandas' earlier string inference, as anomalib was written for."""
        import warnings

        import pandas as pd

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pd.option_context("future.infer_string", False):
                return MVTecLOCODataset(root=root, category="breakfast_box", split=split)

    def rows(records: list[Record]) -> list[tuple]:
        return sorted((str(r.image_path), r.gt_label, tuple(map(str, r.regions)), r.defect) for r in records)

    def their_rows(samples) -> list[tuple]:  # noqa: ANN001
        return sorted(
            (
                str(Path(row.image_path)),
                int(row.label_index),
                tuple(str(Path(m)) for m in row.mask_path or ()),
                row.label,
            )
            for row in samples.itertuples()
        )

    for split, ours_split, n in (("train", "train", 3), ("val", "validation", 2), ("test", "test", 5)):
        reference = their_rows(anomalib_loco(split).samples)
        assert rows(dm.records(ours_split)) == reference and len(reference) == n
    test = dm.records("test")
    assert [len(r.regions) for r in test if r.gt_label] == [1, 2, 1]
    assert {r.defect for r in test} == {"good", "logical_anomalies", "structural_anomalies"}
    assert all(r.mask_path == r.regions[0] for r in test if r.gt_label)

    theirs_test = anomalib_loco("test")
    their_masks = {
        str(Path(theirs_test[i].image_path)): theirs_test[i].gt_mask.numpy() for i in range(len(theirs_test))
    }
    ours_test = AnomalyDataset(test, image_size=16)  # the released size: no resizing
    for i, record in enumerate(test):
        mask = ours_test[i]["gt_mask"][0].numpy() > 0.5
        assert np.array_equal(mask, their_masks[str(record.image_path)].astype(bool))
        assert mask.any() == bool(record.gt_label)
    overlapping = next(r for r in test if len(r.regions) == 2)  # two regions sharing pixels: their union
    union = np.any([np.asarray(Image.open(m)) > 0 for m in overlapping.regions], axis=0)
    assert np.array_equal(ours_test[test.index(overlapping)]["gt_mask"][0].numpy() > 0.5, union)

    records = dm.checked_records()
    assert records["train"] == dm.records("train")
    assert records["val"] == records["calibration"] == dm.records("validation")
    assert records["test"] == test

    missing = root / "breakfast_box" / "ground_truth" / "logical_anomalies" / "000"
    for mask in missing.iterdir():
        mask.unlink()
    missing.rmdir()
    with pytest.raises(DataCheckError, match=r"logical_anomalies/000\.png has no region masks"):
        dm.records("test")


def test_mvtec_loco_samples_carry_each_regions_saturation_area(tmp_path):
    """Each region's saturation area from its pixel value's entry in defects_config.json: an
    absolute one at most the region's area, and scaled with the image's area; a relative one cut
    to whole pixels. Normal images carry none, so that every batch stacks."""
    from adkd.data.dataset import AnomalyDataset
    from adkd.data.mvtec_loco import MVTecLOCODataModule
    from adkd.errors import ImageReadError

    root = replicas.mvtec_loco(tmp_path / "loco")
    test = MVTecLOCODataModule(root=str(root), category="breakfast_box").records("test")
    by_name = {f"{r.image_path.parent.name}/{r.image_path.stem}": i for i, r in enumerate(test)}
    native, doubled = AnomalyDataset(test, image_size=16), AnomalyDataset(test, image_size=32, cache=True)
    # (missing_item: 20 px, at most the 16 px region), (extra_item: all of it, twice), (scratch: half)
    expected = {"logical_anomalies/000": [16], "logical_anomalies/001": [16, 16], "structural_anomalies/000": [8]}
    for name, areas in expected.items():
        sample = native[by_name[name]]
        assert (
            sample["gt_saturation"][: len(areas)].tolist() == areas and not sample["gt_saturation"][len(areas) :].any()
        )
        bits = sample["gt_regions"][0]
        assert [int(((bits >> k) & 1).sum()) for k in range(len(areas))] == [16] * len(areas)
    big = doubled[by_name["logical_anomalies/000"]]["gt_saturation"][0]
    assert float(big) == 64  # 20 px at 16x16 is 80 at 32x32, at most the region's 64
    good = native[by_name["good/000"]]
    assert not good["gt_regions"].any() and not good["gt_saturation"].any()

    region = root / "breakfast_box" / "ground_truth" / "structural_anomalies" / "000" / "000.png"
    Image.fromarray(np.asarray(Image.open(region)) // 251 * 7).save(region)  # a value no defect type has
    with pytest.raises(ImageReadError, match=r"holds the values \[7\].*one of \[251, 253, 255\]"):
        native[by_name["structural_anomalies/000"]]


@pytest.mark.parametrize(
    ("dataset", "category", "write"),
    [
        ("ksdd", "ksdd", replicas.ksdd),
        ("mvtec_ad2", "can", replicas.mvtec_ad2),
        ("mvtec_loco", "pushpins", lambda root: replicas.mvtec_loco(root, ("pushpins",))),
        ("btad", "03", replicas.btad),
        ("mpdd", "bracket_black", replicas.mpdd),
    ],
)
def test_each_dataset_config_reads_its_replica(tmp_path, dataset, category, write):
    from hydra.utils import instantiate

    from adkd.training.config import compose

    root = write(tmp_path / "data")
    cfg = compose([f"dataset={dataset}", f"dataset.root={root}", f"category={category}"], tmp_path / "run")
    datamodule = instantiate(cfg.dataset)
    records = datamodule.checked_records()
    assert datamodule.name == dataset and datamodule.category == category
    assert records["train"] and {r.gt_label for r in records["test"]} == {0, 1}


@pytest.mark.parametrize(
    ("module", "cls", "category", "where"),
    [
        ("ksdd", "KolektorSDDDataModule", "ksdd", "vicos.si/resources/kolektorsdd"),
        ("mvtec_ad2", "MVTecAD2DataModule", "can", "mvtec-ad-2"),
        ("mvtec_loco", "MVTecLOCODataModule", "juice_bottle", "mvtec-loco"),
        ("btad", "BTADDataModule", "02", "btad.zip"),
        ("mpdd", "MPDDDataModule", "tubes", "sharepoint.com"),
    ],
)
def test_missing_dataset_and_wrong_category_say_what_to_do(tmp_path, module, cls, category, where):
    import importlib

    from adkd.errors import ConfigError, DatasetNotFoundError

    datamodule = getattr(importlib.import_module(f"adkd.data.{module}"), cls)
    with pytest.raises(DatasetNotFoundError) as err:
        datamodule(root=str(tmp_path / "nowhere"), category=category)
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message and "Expected layout" in message and where in message
    with pytest.raises(ConfigError, match=f"Unknown category 'nope' for dataset {datamodule.name}. Valid categories: "):
        datamodule(root=str(tmp_path), category="nope")


def test_mpdd_download_is_refused_with_where_to_get_it(tmp_path):
    from adkd.data.mpdd import MPDDDataModule
    from adkd.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot be downloaded by adkd.*OneDrive"):
        MPDDDataModule(root=str(tmp_path), download=True)


def test_downloads_use_anomalibs_archives_and_keep_the_released_layout(tmp_path, monkeypatch):
    """The URL and checksum are anomalib's; BTAD's archive folder is lifted so that the products sit
    in the root, with their files as released (no .bmp to .png conversion)."""
    import anomalib.data.utils.download as anomalib_download

    from adkd.data.download import download, download_info

    assert download_info("ksdd").url == "https://go.vicos.si/kolektorsdd"
    assert download_info("btad").url.endswith("btad/btad.zip")
    assert download_info("mvtec_ad2").url.endswith("mvtec_ad_2.tar.gz")
    assert download_info("mvtec_loco").url.endswith("mvtec_loco_anomaly_detection.tar.xz")

    def fake_download_and_extract(root: Path, info) -> None:  # noqa: ANN001 - the archive as it unpacks
        assert info is download_info("btad")
        replicas.btad(root / "BTech_Dataset_transformed")

    monkeypatch.setattr(anomalib_download, "download_and_extract", fake_download_and_extract)
    download("btad", tmp_path / "btad")
    assert sorted(p.name for p in (tmp_path / "btad").iterdir()) == ["01", "02", "03"]
    assert (tmp_path / "btad" / "03" / "ground_truth" / "ko" / "0000.bmp").is_file()
    with pytest.raises(ValueError, match="No download is known for dataset 'mpdd'"):
        download("mpdd", tmp_path / "mpdd")


# A reader never drops or borrows a file in silence -------------------------------------------------


def test_ksdd2_stops_on_a_test_image_without_its_mask_and_on_a_mask_of_another_size(tmp_path):
    from adkd.data.ksdd2 import KolektorSDD2DataModule
    from adkd.errors import DataCheckError

    root = replicas.ksdd2(tmp_path / "ksdd2")
    (root / "test" / "20001_GT.png").unlink()  # a defect-free test image: its mask is all-zero
    with pytest.raises(DataCheckError, match=r"20001\.png has no mask 20001_GT\.png beside it"):
        KolektorSDD2DataModule(root=str(root)).records("test")
    replicas.ksdd2(root)
    Image.fromarray(np.zeros((8, 16), dtype=np.uint8)).save(root / "test" / "20003_GT.png")  # all-zero, 16x8
    with pytest.raises(DataCheckError, match=r"mask .*20003_GT\.png is 16x8 but its image is 16x16"):
        KolektorSDD2DataModule(root=str(root)).checked_records()
    replicas.ksdd2(root)
    (root / "train" / "10002.png").unlink()
    with pytest.raises(DataCheckError, match=r"mask .*10002_GT\.png has no image 10002\.png"):
        KolektorSDD2DataModule(root=str(root)).records("train")


def test_ksdd_refuses_an_all_zero_mask_of_another_size(tmp_path):
    from adkd.data.ksdd import KolektorSDDDataModule
    from adkd.errors import DataCheckError

    root = replicas.ksdd(tmp_path / "ksdd")
    Image.fromarray(np.zeros((16, 8), dtype=np.uint8)).save(root / "kos01" / "Part0_label.bmp")
    (root / "kos02" / "Part1_label.bmp").unlink()
    with pytest.raises(DataCheckError, match=r"2 files cannot be used") as refused:
        KolektorSDDDataModule(root=str(root)).records("train")
    assert "Part0_label.bmp is 8x16 but its image is 16x16" in str(refused.value)
    assert "kos02/Part1.jpg has no mask Part1_label.bmp" in str(refused.value)


def test_links_out_of_the_dataset_root_are_refused_by_every_reader(tmp_path):
    from adkd.data.folder import MVTecADDataModule
    from adkd.data.visa import VisADataModule
    from adkd.errors import DataCheckError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    secret = elsewhere / "secret.png"
    Image.new("RGB", (16, 16)).save(secret)

    root = replicas.mvtec_ad(tmp_path / "mvtec")
    (root / "bottle" / "train" / "good" / "linked.png").symlink_to(secret)
    with pytest.raises(DataCheckError, match=r"linked\.png is a link to .*secret\.png, outside the dataset root"):
        MVTecADDataModule(root=str(root), category="bottle").checked_records()
    (root / "bottle" / "train" / "good" / "linked.png").unlink()
    outside = tmp_path / "other_bottle"
    (root / "bottle" / "test").rename(outside)
    (root / "bottle" / "test").symlink_to(outside)  # a folder of the tree links out
    with pytest.raises(DataCheckError, match=r"1 file cannot be used:\n  - .*bottle/test is a link to .*other_bottle"):
        MVTecADDataModule(root=str(root), category="bottle").checked_records()
    (root / "bottle" / "test").unlink()
    outside.rename(root / "bottle" / "test")
    (root / "bottle" / "train" / "good" / "inside.png").symlink_to(root / "bottle" / "test" / "good" / "000.png")
    (tmp_path / "mvtec_link").symlink_to(root)  # the root itself may be a link; links inside it stay inside
    records = MVTecADDataModule(root=str(tmp_path / "mvtec_link"), category="bottle").checked_records()
    assert any(r.image_path.name == "inside.png" for r in records["train"] + records["val"])

    visa = replicas.visa(tmp_path / "visa")
    normal = visa / "candle" / "Data" / "Images" / "Normal" / "0000.JPG"
    normal.unlink()
    normal.symlink_to(secret)  # the same rule as the split file's paths (within)
    with pytest.raises(DataCheckError, match=r"0000\.JPG is a link to .*secret\.png, outside the dataset root"):
        VisADataModule(root=str(visa), category="candle").checked_records()


def test_visa_refuses_an_anomalous_row_without_a_mask(tmp_path):
    from adkd.data.visa import VisADataModule
    from adkd.errors import DataCheckError

    root = replicas.visa(tmp_path / "visa")
    split = root / "split_csv" / "1cls.csv"
    split.write_text(split.read_text().replace(",candle/Data/Masks/Anomaly/001.png", ","))
    with pytest.raises(DataCheckError, match=r"1cls\.csv, line \d+: the anomalous image .*001\.JPG has no mask"):
        VisADataModule(root=str(root), category="candle").records("test")
