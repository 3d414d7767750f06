"""OpenVINO: the IR computes what the checkpoint does (fp32), int8 is checked on the test split's
AUROC and refused with the loss named, and predict runs the IR a run folder points to."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def exported(exported_run, tmp_path_factory) -> tuple[Path, dict]:
    """A copy of the trained run with its ONNX and fp32 OpenVINO exports."""
    from adkd.deploy.openvino import export_openvino

    run = Path(shutil.copytree(exported_run, tmp_path_factory.mktemp("openvino") / "run"))
    path, differences = export_openvino(run, "fp32")
    assert path == run / "export" / "model.xml"
    return run, differences


@pytest.fixture()
def run_copy(exported, tmp_path) -> Path:
    return Path(shutil.copytree(exported[0], tmp_path / "run"))


def test_fp32_and_int8_exports_and_predict_with_openvino(exported, run_copy, tiny_mvtec, tmp_path, capsys):
    from adkd.cli import main as adkd
    from adkd.deploy.checkpoints import load_model
    from adkd.deploy.engines import Deployable, OnnxModel, OpenVinoModel
    from adkd.deploy.openvino import export_openvino, openvino_path

    path, differences = run_copy / "export" / "model.xml", exported[1]
    assert max(differences.values()) <= 1e-4
    model, onnx = OpenVinoModel(path), OnnxModel(run_copy / "export" / "model.onnx")
    assert (model.precision, model.compute, model.image_size) == ("fp32", "f32", 32)
    assert model.image_threshold == pytest.approx(onnx.image_threshold) and model.pixel_floor == onnx.pixel_floor
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    module, _ = load_model(run_copy)
    with torch.no_grad():
        reference = Deployable(module).eval()(images)
    for got, expected in zip(model(images), reference, strict=True):
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-4 * max(1.0, float(expected.abs().max())))

    out = tmp_path / "predicted"
    assert (
        adkd(
            [
                "predict",
                str(run_copy),
                str(tiny_mvtec / "widget" / "test"),
                "--engine",
                "openvino",
                "--out",
                str(out),
                "--no-figures",
            ]
        )
        == 0
    )
    tested = {
        Path(r["image_path"]).name + Path(r["image_path"]).parent.name: float(r["pred_score"])
        for r in csv.DictReader((run_copy / "test_predictions.csv").open())
    }
    for row in csv.DictReader((out / "predictions.csv").open()):
        key = Path(row["image_path"]).name + Path(row["image_path"]).parent.name
        assert float(row["pred_score"]) == pytest.approx(tested[key], abs=1e-4)

    path, measured = export_openvino(run_copy, "int8", max_drop=1.0)  # any loss accepted: the pipeline runs
    assert path == openvino_path(run_copy, "int8") and OpenVinoModel(path).precision == "int8"
    assert set(measured["int8"]) == {"image_auroc", "pixel_auroc"}
    assert "Calibrating int8 on 11 training images of folder/widget" in capsys.readouterr().err


def test_int8_that_loses_accuracy_is_refused_with_the_loss_named(run_copy, monkeypatch):
    from adkd.deploy import openvino
    from adkd.errors import UserError

    results = iter([{"image_auroc": 0.99, "pixel_auroc": 0.98}, {"image_auroc": 0.95, "pixel_auroc": 0.979}])
    monkeypatch.setattr(openvino, "split_auroc", lambda infer, datamodule: next(results))
    monkeypatch.setattr(openvino, "_quantize", lambda network, config, n: network)  # the check is tested
    with pytest.raises(
        UserError,
        match=r"int8 loses 4\.00 points of image_auroc on the test split \(image_auroc "
        r"99\.00 -> 95\.00, pixel_auroc 98\.00 -> 97\.90\); at most 0\.5 allowed",
    ):
        openvino.export_openvino(run_copy, "int8")
    assert not openvino.openvino_path(run_copy, "int8").exists()  # nothing left behind
    assert not list((run_copy / "export").glob(".*partial*"))


def test_a_bare_ir_older_than_its_run_is_refused(run_copy, capsys):
    from adkd.cli import main as adkd

    path = run_copy / "export" / "model.xml"
    checkpoint = run_copy / "checkpoints" / "last.ckpt"
    checkpoint.write_bytes(checkpoint.read_bytes() + b"\0")  # the run trained on since
    assert adkd(["predict", str(path), str(run_copy), "--out", str(run_copy / "p")]) == 1
    assert "was exported from another checkpoint" in capsys.readouterr().err
