"""Multiruns beyond Hydra's sequential launcher: submitit's local executor (the code path of
hydra/launcher=slurm, requeue included), joblib's parallel workers, and one GPU per job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "ADKD_OFFLINE": "1"}


def multirun(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "adkd.run", "-m", *args],
        cwd=cwd,
        env=ENV,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def job_folders(cwd: Path) -> list[Path]:
    return sorted(p.parent for p in (cwd / "outputs" / "multirun").glob("*/*/status.json"))


def status(folder: Path) -> dict:
    return json.loads((folder / "status.json").read_text())


# local under -m slow: the default suite runs the local launcher end to end in test_run's multirun and
# test_faults' Ctrl-C of a multirun.
@pytest.mark.parametrize("launcher", [pytest.param("local", marks=pytest.mark.slow), "parallel"])
def test_each_job_runs_in_a_process_of_its_own_and_writes_a_complete_run_folder(launcher, tiny_mvtec, tmp_path):
    proc = multirun([f"hydra/launcher={launcher}", *tiny_overrides(tiny_mvtec, "method=stfpm,rd4ad")], tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()  # one sweep folder, whichever process resolved it
    folders = job_folders(tmp_path)
    assert [f.name for f in folders] == ["0", "1"] and all(f.parent == sweep for f in folders)
    methods = set()
    for folder in folders:
        assert status(folder)["status"] == "finished"
        metrics = json.loads((folder / "metrics.json").read_text())
        methods.add(metrics["method"])
        assert metrics["metrics"]["image_auroc"] is not None
        assert (folder / "checkpoints" / "last.ckpt").is_file() and (folder / ".hydra" / "overrides.yaml").is_file()
    assert methods == {"stfpm", "rd4ad"}
    pids = {status(f)["pid"] for f in folders}
    assert len(pids) == 2 and proc.pid not in pids  # neither job ran in the launching process
    if launcher == "local":
        assert len(list((sweep / ".submitit").glob("[0-9]*"))) == 2  # two submitit jobs


def test_a_job_warned_of_preemption_checkpoints_is_requeued_and_continues_in_its_folder(tiny_mvtec, tmp_path):
    args = [
        "hydra/launcher=local",
        *tiny_overrides(tiny_mvtec, "method=stfpm", "backbone=resnet18", "max_epochs=8", "dataset.num_workers=0"),
    ]
    proc = multirun(args, tmp_path)
    deadline, first = time.time() + 120, None
    while time.time() < deadline and first is None:  # training under way: an epoch's checkpoint exists
        folders = job_folders(tmp_path)
        if folders and (folders[0] / "checkpoints" / "last.ckpt").is_file():
            first = status(folders[0])["pid"]
        time.sleep(0.1)
    assert first is not None, proc.communicate(timeout=60)[0][-3000:]
    (folder,) = folders
    os.kill(first, signal.SIGUSR2)  # what SLURM sends signal_delay_s before the time limit, or on preemption
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    final = status(folder)
    assert final["status"] == "finished" and final["pid"] != first  # finished by the requeued start
    log = (folder / "run.log").read_text()
    assert "checkpointing at this step's end, then requeueing" in log
    assert f"Resuming {folder}" in log and "last.ckpt" in log.split(f"Resuming {folder}")[1].splitlines()[0]
    assert (folder / "metrics.json").is_file()


def test_jobs_sharing_a_node_each_hold_a_gpu_of_their_own(tmp_path):
    code = (
        "import sys, time; from adkd.training.devices import claim; print(claim(2, sys.argv[1]), flush=True); "
        "time.sleep(float(sys.argv[2]))"
    )

    def hold(seconds: float) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path), str(seconds)], env=ENV, text=True, stdout=subprocess.PIPE
        )

    first = hold(30)
    assert first.stdout.readline().strip() == "0"
    second = hold(0)
    assert second.communicate(timeout=60)[0].strip() == "1"  # device 0 is held
    first.kill()
    first.wait()
    assert hold(0).communicate(timeout=60)[0].strip() == "0"  # free again once its job ended, however it ended


def test_the_slurm_launcher_carries_the_keys_people_set_and_requeues_timeouts():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from adkd.training.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(
            "run", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    for key in (
        "timeout_min",
        "gpus_per_node",
        "tasks_per_node",
        "cpus_per_task",
        "mem_gb",
        "array_parallelism",
        "account",
        "qos",
        "setup",
    ):
        assert key in launcher, key
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0  # a job at its time limit comes back
    text = (ROOT / "conf" / "hydra" / "launcher" / "slurm.yaml").read_text()
    assert all(f"# {key}:" in text for key in ("partition", "account", "qos", "setup"))  # documented, commented


def test_slurm_asked_for_where_there_is_none_is_a_one_line_error(tmp_path):
    env = {**ENV, "PATH": str(Path(sys.executable).parent)}  # python, and no sbatch/srun
    args = [sys.executable, "-m", "adkd.run", "-m", "hydra/launcher=slurm", "category=brick"]
    res = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: hydra/launcher=slurm submits jobs to SLURM")
    assert "hydra/launcher=local" in res.stderr


def test_the_slurm_config_reaches_sbatch(tmp_path, monkeypatch):
    """What hydra/launcher=slurm hands to SLURM: the sbatch header submitit writes from conf/hydra/launcher/slurm.yaml
    (submission itself stubbed: there is no SLURM here)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import open_dict
    from submitit.slurm.slurm import SlurmExecutor

    from adkd.training.config import CONF_DIR

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")  # submitit looks for srun before anything
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(
            "run",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=proj"],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.sweep.dir = str(tmp_path / "sweep")
        cfg.hydra.job.name = "run"
    submitted = {}

    def capture(executor, delayed):  # noqa: ANN001
        submitted.update(executor=executor, jobs=delayed)
        return []

    monkeypatch.setattr(SlurmExecutor, "_internal_process_submissions", capture)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    launcher.launch([["category=brick"], ["category=grass"]], initial_job_idx=0)
    assert len(submitted["jobs"]) == 2
    sbatch = submitted["executor"]._make_submission_file_text("python -u -m submitit.core._submit", "0")
    for line in (
        "--signal=USR2@120",
        "--time=240",
        "--partition=gpu",
        "--account=proj",
        "--gpus-per-node=1",
        "--cpus-per-task=8",
        "--mem=32GB",
        "--ntasks-per-node=1",
    ):
        assert f"#SBATCH {line}" in sbatch, line
    assert submitted["executor"].max_num_timeout == 3
