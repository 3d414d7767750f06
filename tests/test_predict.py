"""adkd.deploy.predict: a trained run scores new images as its test did, with thresholds and decisions."""

import csv
import shutil

import pytest

from adkd.methods.registry import method_names
from adkd.training.config import compose
from tests.conftest import smallest_image, tiny_overrides


def test_predict_reproduces_the_test_scores_and_decides_at_the_threshold(trained_run, tiny_mvtec, tmp_path, capsys):
    from adkd.cli import main as adkd

    test_images = tmp_path / "images"
    shutil.copytree(tiny_mvtec / "widget" / "test", test_images)
    (test_images / "spot" / "zz_broken.png").write_bytes(b"not an image")  # skipped, not fatal
    assert (
        adkd(["predict", str(trained_run), str(test_images), "--out", str(tmp_path / "out"), "--masks", "--batch", "3"])
        == 0
    )
    captured = capsys.readouterr()
    assert "8 images scored" in captured.out
    assert "1 files skipped (unreadable)" in captured.err and "zz_broken.png" in captured.err
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    from adkd.deploy.predict import FIELDS

    assert list(rows[0]) == FIELDS and FIELDS[:4] == ["image_path", "pred_score", "normalized_score", "pred_label"]
    tested = {
        r["image_path"].split("/test/")[1]: float(r["pred_score"])
        for r in csv.DictReader((trained_run / "test_predictions.csv").open())
    }
    for row in rows:
        assert float(row["pred_score"]) == pytest.approx(tested[row["image_path"].split("/images/")[1]], abs=1e-5)
        above = float(row["pred_score"]) > float(row["image_threshold"])
        assert int(row["pred_label"]) == above and (float(row["normalized_score"]) > 0.5) == above
    assert len(list((tmp_path / "out" / "figures").glob("*.png"))) == 8
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir())[0] == "good__000_mask.png"


def test_predict_says_what_is_missing(tmp_path, capsys):
    from adkd.cli import main as adkd

    image = tmp_path / "a.png"
    image.write_bytes(b"")
    assert adkd(["predict", str(tmp_path), str(image)]) == 1
    assert f"error: No checkpoint at {tmp_path / 'checkpoints' / 'last.ckpt'}" in capsys.readouterr().err
    assert adkd(["predict", str(tmp_path), str(tmp_path / "nowhere" / "*.png")]) == 1
    assert "error: No image at" in capsys.readouterr().err


def _export_and_predict(run_folder, images, fmt, tmp_path):
    from adkd.deploy.export import export

    path, differences = export(run_folder, fmt, tmp_path / f"model.{fmt}")
    assert path.is_file() and set(differences) >= {"anomaly_map", "pred_score"}
    from adkd.deploy.checkpoints import load_model
    from adkd.deploy.export import parity_tolerance

    assert max(differences["anomaly_map"], differences["pred_score"]) <= parity_tolerance(load_model(run_folder)[0])
    return path


def test_export_to_onnx_matches_the_checkpoint_and_predict_runs_it(exported_run, tiny_mvtec, tmp_path, capsys):
    import torch

    from adkd.cli import main as adkd
    from adkd.deploy.checkpoints import load_model
    from adkd.deploy.engines import Deployable, OnnxModel

    trained_run, path = exported_run, exported_run / "export" / "model.onnx"  # adkd.deploy.export's own check passed
    model = OnnxModel(path)
    assert model.image_size == 32 and model.image_threshold is not None
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # a batch size it never saw
    outputs = model(images)
    assert [tuple(o.shape) for o in outputs] == [(5, 1, 32, 32), (5,), (5, 1, 32, 32), (5,)]
    with torch.no_grad():
        reference = Deployable(load_model(trained_run)[0]).eval()(images)
    for got, expected in zip(outputs[:2], reference[:2], strict=True):
        assert torch.allclose(got, expected, atol=1e-4 * max(1.0, float(expected.abs().max())))
    out = tmp_path / "onnx_out"
    assert adkd(["predict", str(path), str(tiny_mvtec / "widget" / "test"), "--engine", "onnx", "--out", str(out)]) == 0
    torch_rows = tmp_path / "torch_out"
    assert (
        adkd(
            ["predict", str(trained_run), str(tiny_mvtec / "widget" / "test"), "--out", str(torch_rows), "--no-figures"]
        )
        == 0
    )
    onnx_scores = [float(r["pred_score"]) for r in csv.DictReader((out / "predictions.csv").open())]
    torch_scores = [float(r["pred_score"]) for r in csv.DictReader((torch_rows / "predictions.csv").open())]
    assert onnx_scores == pytest.approx(torch_scores, abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("method", method_names())
def test_every_method_exports_with_parity(method, tiny_mvtec, tmp_path):
    from adkd.training.run import run

    size = f"image_size={smallest_image(method)}"  # the fixture's 32 px, or the method's smallest
    run(compose(tiny_overrides(tiny_mvtec, f"method={method}", size), tmp_path / "run"))
    for fmt in ("onnx", "torchscript"):
        _export_and_predict(tmp_path / "run", tiny_mvtec, fmt, tmp_path)


def test_a_labelled_validation_folder_is_scored_and_offers_the_f1_optimal_threshold(tiny_mvtec, tmp_path, caplog):
    import logging

    from adkd.training.run import run

    root = tmp_path / "data"
    shutil.copytree(tiny_mvtec, root)
    val = root / "widget" / "val"
    shutil.copytree(root / "widget" / "test" / "spot", val / "spot")
    for image in sorted((root / "widget" / "train" / "good").iterdir())[:2]:  # two normals move to val/
        (val / "good").mkdir(parents=True, exist_ok=True)
        image.rename(val / "good" / image.name)
    with caplog.at_level(logging.INFO):
        overrides = tiny_overrides(root, "method=rd4ad", "threshold.mode=f1", "evaluate=validation")
        results = run(compose(overrides, tmp_path / "run"))
    assert "F1-optimal image threshold on 6 labelled validation images" in caplog.text
    assert "used (threshold.mode=f1)" in caplog.text
    assert results["thresholds"]["image"] is not None
    # every run scores the labelled validation split; evaluate=validation scores it in place of the test split
    assert results["split"] == "validation"
    assert results["validation"]["labelled_image_auroc"] == pytest.approx(results["metrics"]["image_auroc"], abs=1e-6)
    assert "pixel_ap" in results["validation"] and "labelled_pixel_ap" not in results["validation"]  # val/ has no masks


def test_the_f1_optimal_threshold_separates_what_it_can():
    import torch

    from adkd.training.callbacks import f1_optimal_threshold

    scores, labels = torch.tensor([0.1, 0.3, 0.35, 0.8, 0.9]), torch.tensor([0, 0, 1, 1, 1]).bool()
    threshold, f1 = f1_optimal_threshold(scores, labels)
    assert 0.3 <= threshold < 0.35 and f1 == 1.0  # score > threshold: exactly the three anomalies


def test_a_checkpoint_of_the_earlier_layout_predicts_as_it_did(trained_run, tiny_mvtec, tmp_path):
    """Checkpoints written before the post group and method.network existed (the network's settings,
    the backbone and the map's smoothing all under method) still load, with the same scores."""
    import torch

    from adkd.cli import main as adkd

    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    method = checkpoint["adkd_config"]["method"]
    network = method.pop("network")
    method.update({k: v for k, v in network.items() if k not in ("_target_", "backbone", "pretrained", "weights")})
    method["backbone"] = {"name": network["backbone"], "pretrained": True, "weights": None}
    method.update(method.pop("post"))  # map_sigma, score, ... beside the rest, as they were
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    rows = {}
    for name, source in (("now", trained_run), ("old", old)):
        assert (
            adkd(
                [
                    "predict",
                    str(source),
                    str(tiny_mvtec / "widget" / "test"),
                    "--out",
                    str(tmp_path / name),
                    "--no-figures",
                ]
            )
            == 0
        )
        rows[name] = [float(r["pred_score"]) for r in csv.DictReader((tmp_path / name / "predictions.csv").open())]
    assert rows["old"] == rows["now"] and len(rows["now"]) == 8
