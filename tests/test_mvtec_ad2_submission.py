"""MVTec AD 2's private test sets written in the form its evaluation server takes, with a trained
model on a replica of the release (tests/replicas.py)."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image

from adkd.cli import main as adkd
from adkd.deploy.submission import MAPS, SEGMENTATIONS, archive, problems, write_category
from tests import replicas


@pytest.fixture(scope="module")
def written(trained_run, tmp_path_factory):
    from adkd.deploy.checkpoints import load_model

    root = replicas.mvtec_ad2(tmp_path_factory.mktemp("mvtec_ad2"))
    out = tmp_path_factory.mktemp("submission") / "submission"
    model, config = load_model(trained_run)
    count = write_category(model, config["image_size"], root, "can", out, batch=3)
    return model, config, root, out, count


def test_one_map_and_one_segmentation_per_private_image_at_its_size(written):
    model, _, root, out, count = written
    assert count == 4
    for split, stems in (
        ("test_private", ["000_regular", "001_regular"]),
        ("test_private_mixed", ["000_mixed", "001_mixed"]),
    ):
        assert sorted(p.name for p in (out / MAPS / "can" / split).iterdir()) == [f"{s}.tiff" for s in stems]
        assert sorted(p.name for p in (out / SEGMENTATIONS / "can" / split).iterdir()) == [f"{s}.png" for s in stems]
        for stem in stems:
            anomaly_map = tifffile.imread(out / MAPS / "can" / split / f"{stem}.tiff")
            segmentation = np.asarray(Image.open(out / SEGMENTATIONS / "can" / split / f"{stem}.png"))
            with Image.open(root / "can" / split / f"{stem}.png") as image:
                assert anomaly_map.shape == segmentation.shape == (image.height, image.width)
            assert anomaly_map.dtype == np.float16 and segmentation.dtype == np.uint8
            assert set(np.unique(segmentation)) <= {0, 255}
            clear = np.abs(anomaly_map.astype(np.float32) - 1) > 1e-2  # float16 rounding near the threshold
            assert np.array_equal((segmentation > 0)[clear], (anomaly_map > 1)[clear])
    assert tifffile.imread(out / MAPS / "can" / "test_private_mixed" / "001_mixed.tiff").shape == (16, 24)


def test_the_map_is_the_runs_map_in_units_of_its_pixel_threshold(written):
    """(map - lowest validation value) / (threshold - lowest validation value), at the image's size."""
    from adkd.data.dataset import read_image, resized
    from adkd.deploy.engines import Deployable

    model, config, root, out, _ = written
    path = root / "can" / "test_private_mixed" / "001_mixed.png"
    size = config["image_size"]
    with torch.no_grad():
        raw = Deployable(model)((resized(read_image(path), (size, size)).float() / 255)[None])[0]
    full = F.interpolate(raw, size=(16, 24), mode="bilinear", align_corners=False)[0, 0]
    floor, threshold = float(model.post.pixel_floor), float(model.post.pixel_threshold)
    expected = ((full - floor) / (threshold - floor)).numpy()
    written_map = tifffile.imread(out / MAPS / "can" / "test_private_mixed" / "001_mixed.tiff").astype(np.float32)
    assert np.allclose(written_map, expected, rtol=2e-3, atol=1e-3) and expected.std() > 0


def test_the_check_finds_what_the_server_refuses(written, tmp_path):
    import shutil

    _, _, root, out, _ = written
    found, missing = problems(out, root)
    assert found == [] and missing == ["fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts"]
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    tifffile.imwrite(broken / MAPS / "can" / "test_private" / "000_regular.tiff", np.zeros((16, 16), np.float32))
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(
        broken / SEGMENTATIONS / "can" / "test_private" / "001_regular.png"
    )
    (broken / SEGMENTATIONS / "can" / "test_private_mixed" / "000_mixed.png").unlink()
    (broken / MAPS / "can" / "test_public").mkdir()
    found, _ = problems(broken, root)
    assert len(found) == 4 and "can: holds test_public, which the server refuses" in found.pop(0)
    assert "000_regular.tiff: float32 with shape (16, 16), not one float16 channel" in found[0]
    assert "001_regular.png: not one channel of 0 and 255" in found[1]
    assert "test_private_mixed: test images without a file: 1, files of no test image: 0" in found[2]


def test_archive_is_laid_out_as_mvtecs_checker_packs_it(written, tmp_path):
    import shutil

    _, _, _, out, _ = written
    copy = tmp_path / "mine"
    shutil.copytree(out, copy)
    with tarfile.open(archive(copy)) as tar:
        names = sorted(tar.getnames())
    assert len(names) == 8 and names[0] == "mine/anomaly_images/can/test_private/000_regular.tiff"


def test_only_finished_mvtec_ad2_runs_are_taken(written, trained_run, tmp_path, capsys):
    model, config, root, _, _ = written
    assert adkd(["submit", str(trained_run), "--out", str(tmp_path / "out"), "--root", str(root)]) == 1
    assert "was trained on 'folder', not mvtec_ad2" in capsys.readouterr().err
    pixel = model.post.pixel_threshold.clone()
    try:
        model.post.pixel_threshold.fill_(float("nan"))
        from adkd.errors import UserError

        with pytest.raises(UserError, match="no pixel threshold"):
            write_category(model, config["image_size"], root, "can", tmp_path / "out")
    finally:
        model.post.pixel_threshold.copy_(pixel)


@pytest.mark.slow
def test_a_run_on_mvtec_ad2_then_its_submission(tmp_path, capsys):
    """End to end: a run validates and sets its thresholds on validation/good, then the CLI writes
    its category and says which are still missing."""
    import json

    from adkd.training.config import compose
    from adkd.training.run import run
    from tests.conftest import tiny_overrides

    root = replicas.mvtec_ad2(tmp_path / "mvtec_ad2")
    overrides = [o for o in tiny_overrides(root, "method=rd4ad") if not o.startswith(("dataset=", "category="))]
    folder = tmp_path / "run"
    run(compose(["dataset=mvtec_ad2", "category=can", *overrides], folder))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["metrics"]["image_auroc"] is not None and metrics["thresholds"]["pixel"] is not None
    assert not any(key.startswith("labelled_") for key in metrics["validation"])  # validation/good: normal only
    assert metrics["thresholds"]["segmentation"] is not None  # the dataset's config asks for SegF1
    assert 0 <= metrics["metrics"]["pixel_seg_f1"] <= 1
    out = tmp_path / "submission"
    assert adkd(["submit", str(folder), "--out", str(out), "--archive"]) == 1  # 1 of 8 categories: not packed
    printed = capsys.readouterr()
    assert "can: 4 maps and segmentations" in printed.out and "still missing: fabric" in printed.out
    assert "--archive packs a complete submission only" in printed.err
    assert problems(out, root) == ([], ["fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts"])
