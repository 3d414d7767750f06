"""The ``adkd`` command: its help, its version, the commands of earlier versions, and ``adkd test``."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from adkd.cli import COMMANDS
from adkd.cli import main as adkd
from adkd.version import __version__

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def test_version_and_the_list_of_commands():
    done = run("-m", "adkd", "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"adkd {__version__}"
    listed = run("-m", "adkd", "--help").stdout
    assert all(f"    {name} " in listed for name in COMMANDS)
    unknown = run("-m", "adkd", "trian")
    assert unknown.returncode == 2 and "invalid choice: 'trian'" in unknown.stderr


def test_every_help_answers_without_loading_torch():
    """What makes ``adkd <command> --help`` answer at once: no command's help imports torch,
    Lightning or Hydra's config machinery."""
    probe = (
        "import contextlib, io, sys\n"
        "from adkd.cli import COMMANDS, main\n"
        "for name in COMMANDS:\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "        main([name, '--help'])\n"
        "    assert 'usage: adkd ' + name in out.getvalue(), name\n"
        "print(sorted({'torch', 'lightning', 'anomalib'} & set(sys.modules)))\n"
    )
    done = run("-c", probe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_fit_help_lists_the_config_groups_and_their_options(capsys):
    assert adkd(["fit", "--help"]) == 0
    shown = capsys.readouterr().out
    methods = " ".join(
        sorted(p.stem + ("*" if p.stem == "adps" else "") for p in (ROOT / "conf" / "method").glob("*.yaml"))
    )
    assert f"  method         {methods}" in shown
    assert "  budget         converged demo paper*" in shown
    assert "  steps=null " in shown and "--multirun" in shown


def test_the_commands_of_earlier_versions_say_the_new_one_and_still_work():
    done = run("-m", "adkd.predict", "--help")
    assert done.returncode == 0
    assert done.stderr.splitlines()[0] == "note: python -m adkd.predict is now `adkd predict`"
    assert done.stdout.startswith("usage: adkd predict")
    gone = run("-m", "adkd.callbacks")
    assert gone.returncode == 1 and "adkd.callbacks is now adkd.training.callbacks" in gone.stderr
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import adkd.inference as old  # noqa: F401
    from adkd.deploy import checkpoints

    assert old is checkpoints
    assert [str(w.message) for w in caught if w.category is FutureWarning] == [
        "adkd.inference is now adkd.deploy.checkpoints"
    ]


def test_adkd_test_scores_a_run_as_its_own_test_did(trained_run, tmp_path, capsys):
    """On its own test split, ``adkd test`` gives the run's metrics; its test_predictions.csv says
    the decision, the defect type and the normalised score of each image, and its counts at the
    threshold add up to the test split."""
    out = tmp_path / "again"
    assert adkd(["test", str(trained_run), "--out", str(out)]) == 0
    assert f"Written: {out}" in capsys.readouterr().out
    first = json.loads((trained_run / "metrics.json").read_text())
    again = json.loads((out / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "pixel_ap", "image_f1"):
        assert again["metrics"][key] == pytest.approx(first["metrics"][key], abs=1e-6)
    assert again["tested"].endswith("last.ckpt") and again["decisions"] == first["decisions"]
    with (out / "test_predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image_path", "gt_label", "defect", "pred_score", "normalized_score", "decision"]
    threshold = first["decisions"]["threshold"]
    for row in rows:
        flagged = float(row["pred_score"]) >= threshold
        assert row["decision"] == ("anomalous" if flagged else "normal")
        assert (float(row["normalized_score"]) >= 0.5) == flagged
        assert row["defect"] == ("good" if row["gt_label"] == "0" else Path(row["image_path"]).parent.name)
    d = first["decisions"]
    assert d["tp"] + d["fp"] + d["tn"] + d["fn"] == len(rows)
    assert sum(v["images"] for v in d["found_per_defect"].values()) == sum(r["gt_label"] == "1" for r in rows)
    assert sum(v["found"] for v in d["found_per_defect"].values()) == d["tp"]


def test_adkd_test_takes_other_data_by_overrides_and_refuses_a_missing_category(trained_run, tiny_mvtec, tmp_path):
    from adkd.errors import ConfigError, DatasetNotFoundError
    from adkd.training.testing import test_model

    metrics, out = test_model(trained_run, [f"dataset.root={tiny_mvtec}", "category=widget"], tmp_path / "o")
    assert metrics["category"] == "widget" and (out / "metrics.json").is_file()
    with pytest.raises(DatasetNotFoundError, match="No training images at .*nope"):
        test_model(trained_run, ["category=nope"], tmp_path / "p")
    assert not (tmp_path / "p").exists()
    with pytest.raises(ConfigError, match="takes dataset=, dataset.<key>= and category= overrides, not seed"):
        test_model(trained_run, ["seed=3"], tmp_path / "q")
