"""adkd.predict: a trained run scores new images as its test did, with thresholds and decisions."""

import csv
import shutil

import pytest

from adkd.config import compose
from tests.conftest import tiny_overrides


@pytest.fixture(scope="module")
def trained_run(tiny_mvtec, tmp_path_factory):
    from adkd.run import run

    folder = tmp_path_factory.mktemp("run")
    run(compose(tiny_overrides(tiny_mvtec, "method=rd4ad"), folder))
    return folder


def test_predict_reproduces_the_test_scores_and_decides_at_the_threshold(trained_run, tiny_mvtec, tmp_path, capsys):
    from adkd.predict import main

    test_images = tmp_path / "images"
    shutil.copytree(tiny_mvtec / "widget" / "test", test_images)
    (test_images / "spot" / "zz_broken.png").write_bytes(b"not an image")  # skipped, not fatal
    assert main([str(trained_run), str(test_images), "--out", str(tmp_path / "out"), "--masks", "--batch", "3"]) == 0
    captured = capsys.readouterr()
    assert "8 images scored" in captured.out
    assert "1 files skipped (unreadable)" in captured.err and "zz_broken.png" in captured.err
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    from adkd.predict import FIELDS

    assert list(rows[0]) == FIELDS and FIELDS[:4] == ["image_path", "pred_score", "normalized_score", "pred_label"]
    tested = {r["image_path"].split("/test/")[1]: float(r["pred_score"])
              for r in csv.DictReader((trained_run / "test_predictions.csv").open())}  # fmt: skip
    for row in rows:
        assert float(row["pred_score"]) == pytest.approx(tested[row["image_path"].split("/images/")[1]], abs=1e-5)
        above = float(row["pred_score"]) > float(row["image_threshold"])
        assert int(row["pred_label"]) == above and (float(row["normalized_score"]) > 0.5) == above
    assert len(list((tmp_path / "out" / "figures").glob("*.png"))) == 8
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir())[0] == "good__000_mask.png"


def test_predict_says_what_is_missing(tmp_path, capsys):
    from adkd.predict import main

    image = tmp_path / "a.png"
    image.write_bytes(b"")
    assert main([str(tmp_path), str(image)]) == 1
    assert f"error: No checkpoint at {tmp_path / 'checkpoints' / 'last.ckpt'}" in capsys.readouterr().err
    assert main([str(tmp_path), str(tmp_path / "nowhere" / "*.png")]) == 1
    assert "error: No image at" in capsys.readouterr().err
