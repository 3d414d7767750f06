"""Nothing a file says is trusted: a checkpoint, an export, a split file, a full disk, a value on the
command line, a second process on the same folder. Each probe asserts the message and that nothing
was written, read or run that should not be."""

from __future__ import annotations

import csv
import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from adkd.errors import CheckpointError, ConfigError, DataCheckError
from adkd.training.config import compose
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "ADKD_OFFLINE": "1"}


@pytest.fixture(scope="module")
def trained_run(tiny_mvtec, tmp_path_factory):
    from adkd.training.run import run

    folder = tmp_path_factory.mktemp("trusted_run")
    run(compose(tiny_overrides(tiny_mvtec, "method=stfpm", "backbone=resnet18"), folder))
    return folder


@pytest.fixture
def images(tiny_mvtec, tmp_path) -> Path:
    folder = tmp_path / "images"
    shutil.copytree(tiny_mvtec / "widget" / "test", folder)
    return folder


class _Payload:
    """Pickled, it runs a command when unpickled (what ``torch.load(weights_only=False)`` would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _tampered(run: Path, tmp_path: Path, edit) -> Path:  # noqa: ANN001
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    edit(checkpoint["adkd_config"])
    path = tmp_path / "sent.ckpt"
    torch.save(checkpoint, path)
    return path


def _predict(*args) -> tuple[int, str]:  # noqa: ANN002
    from adkd.cli import main as adkd

    return adkd(["predict", *(str(a) for a in args)])


# 1. A checkpoint's stored config cannot run code --------------------------------------------------


@pytest.mark.parametrize("payload", ["open", "pickle"])
def test_a_checkpoint_whose_config_names_foreign_code_is_refused_by_predict_and_export(
    payload, trained_run, images, tmp_path, capsys
):
    from adkd.cli import main as adkd

    victim, marker, evil = tmp_path / "victim.txt", tmp_path / "marker", tmp_path / "evil.pkl"
    victim.write_text("keep me")
    evil.write_bytes(pickle.dumps(_Payload(marker)))
    factory = (
        {"_target_": "builtins.open", "_args_": [str(victim), "w"]}
        if payload == "open"
        else {"_target_": "torch.load", "f": str(evil), "weights_only": False}
    )
    sent = _tampered(trained_run, tmp_path, lambda config: config["method"].update(optimizer=factory))
    assert _predict(sent, images, "--out", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert (
        f"error: Refused {sent}: its stored config asks to build '{factory['_target_']}' at method.optimizer._target_"
        in err
        and "Nothing in it was run." in err
    )
    assert adkd(["export", str(sent), "--out", str(tmp_path / "m.onnx")]) == 1
    assert "method.optimizer._target_" in capsys.readouterr().err
    assert victim.read_text() == "keep me" and not marker.exists()
    assert not (tmp_path / "out" / "predictions.csv").exists() and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    ("where", "edit"),
    [
        ("dataset._target_", lambda c: c["dataset"].update({"_target_": "torch.load", "f": "x.pkl"})),
        ("method._target_", lambda c: c["method"].update({"_target_": "adkd.training.runs.write_status"})),
        ("method.network._target_", lambda c: c["method"]["network"].update({"_target_": "builtins.print"})),
        (
            "method.network._target_",
            lambda c: c["method"]["network"].update({"_target_": "adkd.training.runs.RunTaken"}),
        ),
        ("method.network.layers._target_", lambda c: c["method"]["network"].update(layers={"_target_": "os.system"})),
        ("method.layers", lambda c: c["method"].update(layers="${oc.decode:'{_target_: builtins.print}'}")),
    ],
)
def test_no_other_target_or_interpolation_is_built_from_a_checkpoint(where, edit, trained_run, tmp_path):
    from adkd.deploy.export import export

    sent = _tampered(trained_run, tmp_path, edit)
    with pytest.raises(CheckpointError, match=f"Refused .* at {where.replace('.', '[.]')}"):
        export(sent, "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_a_torchscript_file_given_to_predict_says_how_to_run_it(images, tmp_path, capsys):
    scripted = tmp_path / "model.pt"
    with zipfile.ZipFile(scripted, "w") as archive:  # the layout torch.jit.save writes
        archive.writestr("model/code/__torch__/module.py", "")
        archive.writestr("model/data.pkl", b"")
    assert _predict(scripted, images, "--out", tmp_path / "out") == 1
    assert "is a TorchScript export, not a checkpoint: run it with torch.jit.load(path)" in capsys.readouterr().err


def test_onnx_metadata_and_external_weights_are_checked(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from adkd.deploy.engines import OnnxModel

    def model(size: str, location: str | None = None) -> Path:
        weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
        if location is not None:
            weight.ClearField("float_data")
            weight.data_location = TensorProto.EXTERNAL
            weight.external_data.add(key="location", value=location)
        graph = helper.make_graph(
            [helper.make_node("Add", ["images", "w"], ["out"])],
            "g",
            [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
            [weight],
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        proto.metadata_props.add(key="image_size", value=size)
        path = tmp_path / f"m{len(list(tmp_path.iterdir()))}.onnx"
        onnx.save(proto, str(path))
        return path

    with pytest.raises(CheckpointError, match="image_size '99999999': expected a whole number from 1 to 8192"):
        OnnxModel(model("99999999"))
    with pytest.raises(CheckpointError, match="its weights are to be read from '../../etc/hostname', outside"):
        OnnxModel(model("32", "../../etc/hostname"))
    assert OnnxModel(model("32")).image_size == 32


@pytest.mark.parametrize("weights", ["file", "default"])
def test_a_checkpoint_config_naming_weights_opens_no_file_and_fetches_none(
    weights, trained_run, images, tmp_path, capsys
):
    """A stored config that drops ``pretrained`` (whose default is True: ImageNet weights, fetched)
    and names a ``weights`` file: predict reads neither; the checkpoint's weights are used."""
    bait = tmp_path / "bait.pth"
    bait.write_text("not weights")

    def edit(config: dict) -> None:
        config["method"]["network"].pop("pretrained")
        config["method"]["network"]["weights"] = str(bait) if weights == "file" else None

    sent = _tampered(trained_run, tmp_path, edit)
    assert _predict(sent, images, "--out", tmp_path / "out", "--no-figures") == 0, capsys.readouterr().err
    assert "images scored" in capsys.readouterr().out


def test_a_config_that_cannot_be_rebuilt_is_named_with_its_whole_error(trained_run, tmp_path):
    from adkd.deploy.checkpoints import load_model

    sent = _tampered(trained_run, tmp_path, lambda config: config["method"]["network"].update(layers=[9] * 120))
    with pytest.raises(CheckpointError, match="Cannot rebuild the model") as refused:
        load_model(sent)
    assert f"got {[9] * 120}). Was it written by another version of adkd?" in str(refused.value)


# 2. A stale export is never used silently ---------------------------------------------------------


def test_an_export_older_than_its_checkpoint_is_exported_again_or_refused(trained_run, images, tmp_path, capsys):
    from adkd.deploy.export import export

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    onnx_file, _ = export(run, "onnx")
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    checkpoint["state_dict"]["post.image_threshold"] = torch.tensor(123.0)  # the run went on: a new checkpoint
    checkpoint["global_step"] += 10
    torch.save(checkpoint, run / "checkpoints" / "last.ckpt")
    capsys.readouterr()
    assert _predict(onnx_file, images, "--out", tmp_path / "bare", "--no-figures") == 1
    assert "was exported from another checkpoint (epoch " in capsys.readouterr().err
    assert _predict(run, images, "--engine", "onnx", "--out", tmp_path / "out", "--no-figures") == 0
    assert "Exporting " in capsys.readouterr().err
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    assert {float(r["image_threshold"]) for r in rows} == {123.0}  # the checkpoint's, not the old export's


# 3. Two predicts into one folder ------------------------------------------------------------------


def test_a_second_predict_into_a_folder_being_written_is_refused(trained_run, images, tmp_path, capsys):
    from adkd.locks import release, try_lock

    out = tmp_path / "out"
    out.mkdir()
    held = try_lock(out / ".adkd-predict.lock")  # another predict at work
    try:
        assert _predict(trained_run, images, "--out", out, "--no-figures") == 1
    finally:
        release(held)
    assert f"error: {out} is being written by another adkd.deploy.predict (pid {os.getpid()}" in capsys.readouterr().err
    assert not (out / "predictions.csv").exists()
    assert _predict(trained_run, images, "--out", out, "--no-figures") == 0  # free again
    assert len(list(csv.DictReader((out / "predictions.csv").open()))) == 8


def test_predict_never_scores_its_own_outputs(trained_run, images, tmp_path, capsys):
    assert _predict(trained_run, images, "--out", images / "predictions") == 0
    assert _predict(trained_run, images, "--out", images / "again") == 0
    assert "8 images scored" in capsys.readouterr().out.splitlines()[-1]


# 4. A full disk -----------------------------------------------------------------------------------


def test_a_status_is_written_in_place_when_the_disk_is_full(tmp_path, monkeypatch):
    from adkd.training import runs

    runs.write_status(tmp_path, "running")

    def full(*args, **kwargs):  # noqa: ANN002, ANN003
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.os, "replace", full)
    runs.write_status(tmp_path, "failed", error="disk full")
    assert runs.read_status(tmp_path)["status"] == "failed"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temporary file left


@pytest.fixture
def small_disk(tmp_path):
    """A 13 MB tmpfs: one checkpoint of the tiny RD4AD (about 11 MB) fits, a second beside it does not."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=13m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_the_run_in_one_line_and_keeps_the_last_checkpoint(small_disk, tiny_mvtec, tmp_path):
    args = [*tiny_overrides(tiny_mvtec, "method=rd4ad", "max_epochs=3"), f"paths.output_root={small_disk}"]
    proc = subprocess.run(
        [sys.executable, "-m", "adkd.run", *args], cwd=tmp_path, env=ENV, text=True, capture_output=True, timeout=300
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "a checkpoint needs about" in proc.stdout  # warned before training (the log)
    (run,) = [p.parent for p in small_disk.rglob("status.json")]
    assert f"error: The device holding {run} ran out of space" in proc.stderr
    assert "The checkpoint of the last finished epoch is kept" in proc.stderr and "resume=true" in proc.stderr
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "ran out of space" in status["error"]
    assert not [p for p in small_disk.rglob("*") if ".tmp" in p.name]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    (small_disk / "filler").write_bytes(b"\0" * shutil.disk_usage(small_disk).free)  # now nothing is left
    proc = subprocess.run(
        [sys.executable, "-m", "adkd.run", *args], cwd=tmp_path, env=ENV, text=True, capture_output=True, timeout=300
    )
    assert proc.returncode == 1 and proc.stderr.startswith("error: no space to start a run in"), proc.stderr[-2000:]
    assert [p.parent for p in small_disk.rglob("status.json")] == [run]  # no folder without a status


# 5. Split files stay inside the dataset root ------------------------------------------------------


@pytest.mark.parametrize(
    "row",
    [
        "candle,train,normal,../pin/A00.png,",
        "candle,train,normal,/etc/hostname,",
        "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,/etc/hostname",
    ],
)
def test_a_split_file_that_names_a_path_outside_the_root_stops_the_run_naming_the_row(row, tmp_path):
    from adkd.data.visa import VisADataModule

    (tmp_path / "visa" / "split_csv").mkdir(parents=True)
    (tmp_path / "visa" / "split_csv" / "1cls.csv").write_text(f"object,split,label,image,mask\n{row}\n")
    datamodule = VisADataModule(root=str(tmp_path / "visa"), category="candle")
    split = row.split(",")[1]
    with pytest.raises(DataCheckError, match=r"1cls.csv, line 2: the path '.*' leaves the dataset root"):
        datamodule.records(split)


# 6. Values are checked before any work ------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("threshold.fpr=2", "threshold.fpr=2 is not valid: threshold.fpr must be a share of normal validation"),
        ("image_size=0", "image_size=0 is not valid: image_size must be a whole number of pixels from 32 to 8192"),
        ("image_size=-1", "image_size=-1 is not valid"),
        ("batch_size=0", "batch_size=0 is not valid: batch_size must be a whole number, 1 or more"),
        ("lr=-1", "lr=-1 is not valid: lr must be a number above 0"),
        ("lr=0", "lr=0 is not valid: lr must be a number above 0 for a method that optimises"),
        ("max_epochs=0", "max_epochs=0 is not valid: max_epochs must be null"),
        ("steps=0", "steps=0 is not valid: steps must be null or a whole number of optimiser steps, 1 or more"),
        ("max_epochs=-1", "max_epochs=-1 is not valid"),
        ("threshold.mode=best", "threshold.mode='best' is not valid: threshold.mode must be fpr or f1"),
    ],
)
def test_a_bad_value_is_refused_before_any_data_is_read(override, message, tmp_path):
    from adkd.training.run import run

    # The dataset is nowhere: the value's error must come first, before anything looks for data.
    cfg = compose(["dataset=folder", f"dataset.root={tmp_path / 'nowhere'}", override], tmp_path / "run")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        run(cfg)
    assert not (tmp_path / "run" / "status.json").exists()


def test_predict_checks_its_options_before_loading_anything(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    nowhere = tmp_path / "no_run"  # no model either: the option's error must come first
    assert _predict(nowhere, a_file, "--out", a_file) == 1
    assert f"error: --out {a_file} is a file: give a folder" in capsys.readouterr().err
    assert _predict(nowhere, a_file, "--out", "/proc/adkd") == 1
    assert "error: --out /proc/adkd cannot be written" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert _predict(nowhere, a_file, "--device", "cuda", "--engine", "onnx") == 1
        assert "error: --device cuda: torch sees no CUDA GPU here. Use --device cpu." in capsys.readouterr().err
    assert _predict(nowhere, a_file, "--out", tmp_path / "fresh") == 1  # no model: nothing left behind
    assert "error: No checkpoint at" in capsys.readouterr().err and not (tmp_path / "fresh").exists()
    with pytest.raises(SystemExit):
        _predict(nowhere, a_file, "--batch", "0")
    assert "argument --batch: must be 1 or more, got 0" in capsys.readouterr().err


# 7. Resume says what it does, and one run has one trainer -----------------------------------------


def test_a_run_being_trained_by_a_live_process_is_not_trained_again(trained_run, tmp_path):
    from adkd.locks import release, try_lock
    from adkd.training.run import run
    from adkd.training.runs import RunTaken, write_status

    folder = tmp_path / "run"
    folder.mkdir()
    write_status(folder, "interrupted")
    before = (folder / "status.json").read_text()
    held = try_lock(folder / ".run.lock")  # the first resume, still training
    try:
        with pytest.raises(RunTaken, match=f"{folder} is being trained by another process \\(pid {os.getpid()}"):
            run(compose(["method=stfpm", "resume=true"], folder))
    finally:
        release(held)
    assert (folder / "status.json").read_text() == before  # the other process's status is left alone


def test_resume_with_nothing_to_resume_says_a_new_run_starts(tiny_mvtec, tmp_path, caplog):
    import logging

    from adkd.training.run import run

    with caplog.at_level(logging.WARNING):
        run(compose(tiny_overrides(tiny_mvtec, "method=stfpm", "backbone=resnet18", "resume=true"), tmp_path / "new"))
    assert (
        f"resume=true: no unfinished run of this command under {tmp_path}; starting a new run in "
        f"{tmp_path / 'new'}" in caplog.text
    )
    assert "Resuming" not in caplog.text


# 8. An unfinished model says so before scoring ----------------------------------------------------


def test_a_model_that_never_finished_says_so_before_scoring(trained_run, images, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for name in ("image_threshold", "pixel_threshold", "image_floor", "pixel_floor"):
        checkpoint["state_dict"][f"post.{name}"] = torch.tensor(float("nan"))  # as an interrupted run leaves it
    torch.save(checkpoint, run / "checkpoints" / "last.ckpt")
    assert _predict(run, images, "--out", tmp_path / "out", "--masks", "--no-figures") == 0
    captured = capsys.readouterr()
    assert "never finished training (1 of 1 epochs), so it has no threshold" in captured.err
    assert "no masks" in captured.err and "8 images scored (no threshold: scores only)" in captured.out
    assert captured.err.index("never finished") < captured.err.index("predict")  # before any scoring


# 9. Smaller ---------------------------------------------------------------------------------------


def test_report_on_a_folder_that_does_not_exist_says_so(tmp_path, capsys):
    from adkd.cli import main as adkd

    assert adkd(["report", str(tmp_path / "nowhere")]) == 1
    assert f"error: {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err


def test_one_corrupt_metrics_file_is_left_out_of_the_report_with_one_warning(tmp_path, capsys):
    from adkd.cli import main as adkd

    for job, auroc in (("0", 0.91), ("1", 0.83)):
        (tmp_path / job).mkdir()
        (tmp_path / job / "metrics.json").write_text(
            json.dumps(
                {
                    "method": "rd4ad",
                    "dataset": "folder",
                    "category": f"c{job}",
                    "seed": 0,
                    "metrics": {"image_auroc": auroc},
                }
            )
        )
    for job, text in (("2", '{"method": "rd4ad", "metr'), ("3", "[]")):
        (tmp_path / job).mkdir()
        (tmp_path / job / "metrics.json").write_text(text)
    assert adkd(["report", str(tmp_path), "--metrics", "image_auroc", "--no-curves"]) == 0
    out, err = capsys.readouterr()
    warnings = err.strip().splitlines()
    assert len(warnings) == 2 and all(line.startswith("warning: ") for line in warnings)
    assert f"warning: {tmp_path / '2' / 'metrics.json'} left out of the report: is not valid JSON" in warnings[0]
    assert f"warning: {tmp_path / '3' / 'metrics.json'} left out of the report: is not a run's results" in warnings[1]
    assert "91.0" in out and "83.0" in out and "(2 runs;" in out


def test_ctrl_c_during_an_export_prints_one_line_and_leaves_no_half_written_file(
    trained_run, tmp_path, capsys, monkeypatch
):
    from adkd.cli import main as adkd
    from adkd.deploy import export

    out = tmp_path / "m.onnx"

    def interrupted(deployable, example, path, properties):  # noqa: ANN001 - Ctrl-C mid-write
        Path(path).write_bytes(b"half an onnx file")
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "write_onnx", interrupted)
    try:
        status = adkd(["export", str(trained_run), "--out", str(out)])
    except KeyboardInterrupt:  # what a traceback would end in: not pytest's own Ctrl-C
        pytest.fail("Ctrl-C during an export escaped as a KeyboardInterrupt traceback")
    assert status == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["Interrupted: the export did not finish (a half-written file is removed); run the command again."]
    assert not out.exists()
