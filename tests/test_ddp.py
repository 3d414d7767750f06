"""trainer=ddp without GPUs: two CPU processes (gloo) train together; the test runs on rank 0 only."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_cpu_processes_train_together_and_write_one_run_folder(tiny_mvtec, tmp_path):
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
           "trainer.benchmark=false", "method=stfpm", "backbone=resnet18", "max_epochs=2",
           "dataset.num_workers=0"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "adkd.run", *tiny_overrides(tiny_mvtec), *ddp], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    folders = list((tmp_path / "outputs" / "runs").glob("*/*/*/*"))
    assert len(folders) == 1  # the second rank wrote into the first one's folder, not a folder of its own
    (folder,) = folders
    assert json.loads((folder / "status.json").read_text())["status"] == "finished"
    metrics = json.loads((folder / "metrics.json").read_text())["metrics"]
    assert all(v is None or math.isfinite(v) for v in metrics.values())
    assert (folder / "checkpoints" / "last.ckpt").is_file() and (folder / "train_ddp_process_1.log").is_file()
