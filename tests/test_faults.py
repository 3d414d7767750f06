"""Fault injection on the real CLI, in subprocesses: signals mid-training and resuming, two runs
started together, and bad inputs that must be answered before any training step."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "ADKD_OFFLINE": "1"}


def _default_sigint() -> None:
    # A shell's background job starts with SIGINT ignored, and Python then keeps ignoring it: the
    # run under test must get Ctrl-C as a terminal user's run does, however pytest was started.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "adkd.run", *args],
        cwd=cwd,
        env=ENV,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_default_sigint,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def run_dirs(cwd: Path) -> list[Path]:
    return sorted(p.parent for p in (cwd / "outputs" / "runs").rglob("status.json"))


def long_run(root: Path, epochs: int = 8) -> list[str]:
    return tiny_overrides(root, "method=stfpm", "backbone=resnet18", f"max_epochs={epochs}", "dataset.num_workers=0")


def wait_mid_training(cwd: Path, proc: subprocess.Popen, timeout: float = 120) -> Path:
    """Wait until an epoch's checkpoint has been written twice (so training is under way), then
    return the checkpoint's path."""
    deadline, seen = time.time() + timeout, None
    while time.time() < deadline and proc.poll() is None:
        ckpts = list((cwd / "outputs" / "runs").rglob("checkpoints/last.ckpt"))
        if ckpts:
            mtime = ckpts[0].stat().st_mtime_ns
            if seen is not None and mtime != seen:
                return ckpts[0]
            seen = mtime
        time.sleep(0.05)
    raise AssertionError(f"no second checkpoint within {timeout} s:\n{finish(proc)[1][-2000:]}")


# SIGTERM runs under -m slow: the same handler as SIGINT (which also checks the resumed run against an
# uninterrupted one), and test_launchers' preemption case signals a job mid-training in the default suite.
@pytest.mark.parametrize("signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_a_signal_mid_training_keeps_a_checkpoint_and_resume_ends_like_an_uninterrupted_run(
    signum, tiny_mvtec, tmp_path
):
    args = long_run(tiny_mvtec)
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    proc = start(args, stopped)
    wait_mid_training(stopped, proc)
    proc.send_signal(signum)
    code, out = finish(proc)
    assert code == 128 + signum, out[-2000:]
    assert f"Interrupted ({signal.Signals(signum).name})" in out and "resume=true" in out
    (folder,) = run_dirs(stopped)
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "interrupted" and Path(status["checkpoint"]).is_file()
    assert not (folder / "metrics.json").exists()

    code, out = finish(start([*args, "resume=true"], stopped))  # the same command, one flag more
    assert code == 0, out[-3000:]
    assert run_dirs(stopped) == [folder]  # continued in the same folder
    assert json.loads((folder / "status.json").read_text())["status"] == "finished"
    if signum == signal.SIGTERM:
        return  # one comparison with the uninterrupted run is enough
    from adkd.training.config import compose
    from adkd.training.run import run

    reference = run(compose(args, tmp_path / "straight"))["metrics"]  # uninterrupted, in this process (one thread)
    resumed = json.loads((folder / "metrics.json").read_text())["metrics"]
    for name, value in reference.items():
        if name != "inference_ms_per_image":
            assert resumed[name] == pytest.approx(value, abs=1e-3), name


def test_ctrl_c_in_a_multirun_prints_the_command_that_resumes_the_sweep_in_its_folder(tiny_mvtec, tmp_path):
    args = ["-m", *long_run(tiny_mvtec, epochs=4), "seed=0,1"]  # job 0 is stopped after its first epoch
    proc = start(args, tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "outputs").rglob("0/checkpoints/last.ckpt")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    code, out = finish(proc)
    assert code == 130, out[-2000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    command = out.split("Resume with: ")[1].splitlines()[0].split()
    assert command[:4] == ["python", "-m", "adkd.run", "-m"]
    assert f"hydra.sweep.dir={sweep.relative_to(tmp_path)}" in command
    assert "seed=0,1" in command and command[-1] == "resume=true"
    code, out = finish(start(command[3:], tmp_path))
    assert code == 0, out[-3000:]
    assert list((tmp_path / "outputs" / "multirun").iterdir()) == [sweep]  # continued in the same folder
    assert [json.loads((sweep / job / "status.json").read_text())["status"] for job in ("0", "1")] == ["finished"] * 2
    assert f"Resuming {sweep.resolve() / '0'} from" in (sweep / "0" / "run.log").read_text()


def test_two_runs_started_together_get_folders_of_their_own(tiny_mvtec, tmp_path):
    args = tiny_overrides(tiny_mvtec, "method=stfpm", "backbone=resnet18", "dataset.num_workers=0")
    procs = [start(args, tmp_path), start(args, tmp_path)]
    results = [finish(p) for p in procs]
    assert [code for code, _ in results] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    folders = run_dirs(tmp_path)
    assert len(folders) == 2
    for folder in folders:
        assert json.loads((folder / "status.json").read_text())["status"] == "finished"
        assert (folder / "metrics.json").is_file() and (folder / "checkpoints" / "last.ckpt").is_file()


def _bad_inputs(tiny_mvtec: Path, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (overrides, the start of what the user must read)."""
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_mvtec, corrupt)
    (corrupt / "widget" / "test" / "spot" / "001.png").write_bytes(b"\x89PNG garbage")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not weights" * 8)
    foreign = tmp_path / "foreign.ckpt"
    finish(start([*tiny_overrides(tiny_mvtec, "method=rd4ad"), f"hydra.run.dir={tmp_path / 'rd4ad'}"], tmp_path))
    shutil.copy(tmp_path / "rd4ad" / "checkpoints" / "last.ckpt", foreign)
    bad_image = corrupt / "widget" / "test" / "spot" / "001.png"
    unusable = f"folder/widget: 1 of 20 files cannot be used:\n  - {bad_image} is not a readable image"
    return {
        "corrupt test image": (tiny_overrides(corrupt), unusable),
        "missing dataset": (["dataset=mvtec", f"dataset.root={tmp_path / 'nowhere'}"], "MVTec AD category 'bottle'"),
        "wrong category": (["dataset=elpv", "category=mnoo"], "Unknown category 'mnoo' for dataset elpv"),
        "garbage weights": (
            tiny_overrides(tiny_mvtec, "backbone.pretrained=true", f"backbone.weights={garbage}"),
            f"Cannot read backbone weights {garbage}",
        ),
        "another method's checkpoint": (
            tiny_overrides(tiny_mvtec, "method=stfpm", f"ckpt_path={foreign}"),
            f"Checkpoint {foreign} does not fit STFPM",
        ),
    }


@pytest.mark.slow
def test_bad_inputs_are_answered_before_training_in_one_message(tiny_mvtec, tmp_path):
    for name, (args, expected) in _bad_inputs(tiny_mvtec, tmp_path).items():
        cwd = tmp_path / name.replace(" ", "_")
        cwd.mkdir()
        code, out = finish(start(args, cwd))
        assert code == 1, (name, out[-2000:])
        assert f"error: {expected}" in out, (name, out[-2000:])
        assert "Traceback" not in out and "HYDRA_FULL_ERROR" not in out and "Epoch 0" not in out, (name, out[-2000:])
        for folder in run_dirs(cwd):  # whatever folder it made says it failed
            assert json.loads((folder / "status.json").read_text())["status"] == "failed"
            assert not (folder / "metrics.json").exists()


def test_a_gpu_asked_for_where_there_is_none_is_a_one_line_error(tiny_mvtec, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, out = finish(start(tiny_overrides(tiny_mvtec, "trainer=gpu"), tmp_path))
    assert code == 1 and "error: trainer=gpu asks for a CUDA GPU, but torch sees none" in out
    assert "Traceback" not in out


def test_a_one_class_test_split_stores_null_not_zero(tiny_mvtec, tmp_path):
    root = tmp_path / "normal_only"
    shutil.copytree(tiny_mvtec, root)
    shutil.rmtree(root / "widget" / "test" / "spot")
    shutil.rmtree(root / "widget" / "ground_truth")
    code, out = finish(start(tiny_overrides(root, "method=stfpm", "backbone=resnet18"), tmp_path))
    assert code == 0, out[-2000:]
    assert "image_auroc is undefined: the test split has no anomalous images" in out
    assert "image_auroc             n/a" in out
    metrics = json.loads((run_dirs(tmp_path)[0] / "metrics.json").read_text())["metrics"]
    assert metrics["image_auroc"] is None and metrics["image_ap"] is None


def test_the_resume_command_keeps_a_run_folder_the_user_named():
    """A run started with hydra.run.dir=... continues there only if the printed command says so."""
    from adkd.training.config import compose
    from adkd.training.run import _resume_command

    compose(["method=rd4ad", "hydra.run.dir=runs/my run"], "unused")
    assert _resume_command() == "python -m adkd.run method=rd4ad 'hydra.run.dir=runs/my run' resume=true"
    compose(["method=rd4ad"], "unused")
    assert _resume_command() == "python -m adkd.run method=rd4ad resume=true"
