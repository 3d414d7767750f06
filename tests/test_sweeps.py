"""Searches on validation: Hydra's Optuna sweeper (conf/hparams_search/) and W&B sweeps
(adkd.training.wandb_sweep, experiments/sweep_mvtec.yaml) over each method's search_space, run end to end
on tiny data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from adkd.methods.registry import method_names
from adkd.training.config import compose
from tests.conftest import tiny_overrides
from tests.wandb_file import run_summary

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "ADKD_OFFLINE": "1"}
# What a unit test changes in a sweep's command (later overrides win): tiny images, a small
# backbone with random weights, one epoch, the CPU.
TEST_SCALE = [
    "image_size=32",
    "batch_size=4",
    "max_epochs=1",
    "backbone=resnet18",
    "backbone.pretrained=false",
    "trainer=cpu",
    "num_figures=2",
    "dataset.num_workers=0",
]


def search_space(method: str) -> dict[str, str]:
    return dict(OmegaConf.load(ROOT / "conf" / "method" / f"{method}.yaml").search_space)


@pytest.mark.parametrize("method", method_names())
def test_each_search_tunes_knobs_its_method_has_on_a_validation_metric(method, tmp_path):
    from adkd.training.config import upgrade_overrides
    from adkd.training.wandb_sweep import sweep_config

    old, notes = upgrade_overrides([f"hparams_search={method}"])  # an earlier version's spelling
    assert notes == [
        f"note: hparams_search={method} is now hparams_search=optuna method={method} (the old spelling still works)"
    ]
    for spelling in (old, ["hparams_search=optuna", f"method={method}"]):
        cfg = compose(spelling, tmp_path)
        assert cfg.method_name == method and cfg.optimized_metric.startswith("val/")
    assert search_space(method), f"{method}: conf/method/{method}.yaml has no search_space"
    for key in search_space(method):
        assert OmegaConf.select(cfg, key, default="absent") != "absent", f"{method}: no config key {key}"
    sweep = sweep_config([f"method={method}", "dataset=mvtec"])
    assert set(sweep["parameters"]) == set(search_space(method))  # W&B searches the same knobs
    assert sweep["metric"] == {"name": cfg.optimized_metric, "goal": "maximize"}


def test_search_grammar_translates_to_w_and_b():
    from adkd.training.wandb_sweep import parameter

    assert parameter("lr", "tag(log, interval(1.0e-4, 3.0e-3))") == {
        "distribution": "log_uniform_values",
        "min": 1e-4,
        "max": 3e-3,
    }
    assert parameter("w", "interval(0.25, 4.0)") == {"distribution": "uniform", "min": 0.25, "max": 4.0}
    assert parameter("k", "choice(1, 2, 4, 8)") == {"values": [1, 2, 4, 8]}
    assert parameter("c", "choice(mul, add)") == {"values": ["mul", "add"]}
    assert parameter("n", "range(1, 7, 2)") == {"values": [1, 3, 5]}


def test_a_two_trial_optuna_study_keeps_the_best_validation_value(tiny_mvtec, tmp_path):
    args = [
        "hparams_search=optuna",
        "method=stfpm",
        "hydra.sweeper.study_name=stfpm",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.storage=sqlite:///study.db",
        *tiny_overrides(tiny_mvtec),
    ]
    res = subprocess.run(
        [sys.executable, "-m", "adkd.run", *args], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    study = OmegaConf.load(sweep / "optimization_results.yaml")
    trials = {}
    for job in sorted(sweep.glob("[0-9]*")):
        results = json.loads((job / "metrics.json").read_text())
        overrides = OmegaConf.load(job / ".hydra" / "overrides.yaml")
        params = {o.split("=")[0]: o.split("=")[1] for o in overrides if o.split("=")[0] in search_space("stfpm")}
        trials[job.name] = (results["validation"]["pixel_ap"], results["metrics"]["pixel_ap"], params)
    assert len(trials) == 2
    best_val, best_test, best_params = max(trials.values(), key=lambda t: t[0])
    assert study.best_value == pytest.approx(best_val, abs=1e-12)  # from validation ...
    assert study.best_value != pytest.approx(best_test, abs=1e-9)  # ... not from the test split
    assert {k: str(v) for k, v in study.best_params.items()} == best_params
    import optuna

    stored = optuna.load_study(study_name="stfpm", storage=f"sqlite:///{tmp_path / 'study.db'}")  # outlives the sweep
    assert sorted(t.value for t in stored.trials) == sorted(t[0] for t in trials.values())


def agent_command(sweep_file: Path) -> tuple[list[str], dict]:
    """The command W&B's agent runs for one parameter set of the sweep (each parameter's first value,
    or its lower bound), built with the agent's own helpers, and that parameter set."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    sweep = yaml.safe_load(sweep_file.read_text())
    params = {k: v["values"][0] if "values" in v else v["min"] for k, v in sweep["parameters"].items()}
    variables = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    variables.update(interpreter=["python"], program=[sweep["program"]], env=["/usr/bin/env"])  # as the agent does
    command = []
    for word in sweep_utils.create_sweep_command(list(sweep["command"])):
        word = str(word)
        command += variables.get(word[2:-1]) or [] if word.startswith("${") and word.endswith("}") else [word]
    return command, params


# a method's search under -m slow: the same command as the category grid; every method's search
# config is checked in the default suite (test_each_search_tunes_knobs_its_method_has_on_a_validation_metric)
@pytest.mark.parametrize("name", ["mvtec", pytest.param("stfpm", marks=pytest.mark.slow)])
def test_each_w_and_b_sweep_command_runs_offline_and_names_its_run(name, tiny_mvtec, tmp_path):
    """The category grid of experiments/sweep_mvtec.yaml, and a method's search (adkd.training.wandb_sweep;
    every method's is built the same way, from its search_space)."""
    sweep_file = ROOT / "experiments" / "sweep_mvtec.yaml"
    if name != "mvtec":
        from adkd.training.wandb_sweep import sweep_config

        sweep_file = tmp_path / f"sweep_{name}.yaml"
        overrides = [f"method={name}", "dataset=mvtec", "dataset.root=datasets/mvtec", "category=bottle"]
        sweep_file.write_text(yaml.safe_dump(sweep_config(overrides)))
    command, params = agent_command(sweep_file)
    assert command[:4] == ["/usr/bin/env", "python", "-m", "adkd.run"]
    (tmp_path / "datasets" / "mvtec").mkdir(parents=True)
    shutil.copytree(tiny_mvtec / "widget", tmp_path / "datasets" / "mvtec" / "bottle")  # the command's dataset.root
    python_first = f"{Path(sys.executable).parent}:{ENV['PATH']}"  # the agent runs in the user's environment
    env = {**ENV, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PATH": python_first}
    env.pop("WANDB_API_KEY", None)
    res = subprocess.run(command + TEST_SCALE, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (folder,) = [p.parent for p in (tmp_path / "outputs" / "runs").rglob("metrics.json")]
    (run_file,) = folder.glob("wandb/offline-run-*/run-*.wandb")  # ready for `wandb sync`
    run = run_summary(run_file)
    words = dict(w.split("=", 1) for w in command if "=" in w)
    method, category = words.get("method", params.get("method")), words.get("category", params.get("category"))
    assert run["name"] == f"{method}-mvtec-{category}" and run["group"] == words["experiment_name"]
    config = OmegaConf.create(run["config"])
    for key, value in params.items():  # the sweep's parameters are in the run's config
        assert f"{key}={value}" in config.overrides, key
        chosen = config.get(f"{key}_name") if key in ("method", "dataset") else OmegaConf.select(config, key)
        assert chosen == value, key
