"""Recipes counted in optimiser steps, and runs that stopped while still learning."""

import json
import logging
import math

import pytest
import torch

from adkd.callbacks import still_learning
from adkd.config import compose
from tests.conftest import tiny_overrides


def _demo(root, *extra: str) -> list[str]:
    return [o for o in tiny_overrides(root, "method=stfpm", "budget=demo", *extra) if o != "max_epochs=1"]


def test_demo_steps_become_the_epochs_they_take_on_this_training_set(tiny_mvtec, tmp_path, caplog):
    """The fixture's 11 training images at batch 4 are 3 batches an epoch: 7 steps take 3 epochs (9
    steps), printed at the start and kept in metrics.json; 50 images would take 1 epoch per 13 batches."""
    from adkd.run import run

    cfg = compose(_demo(tiny_mvtec, "steps=7"), tmp_path)
    assert cfg.max_epochs is None and cfg.steps == 7
    with caplog.at_level(logging.INFO, logger="adkd.callbacks"):
        results = run(cfg)
    assert "Training: 7 steps = 3 epochs of 3 batches (11 training images): 9 optimiser steps" in caplog.text
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["steps"] == 7 and saved["max_epochs"] is None
    assert {k: saved["training"][k] for k in ("steps", "epochs", "batches_per_epoch", "steps_asked")} == {
        "steps": 9, "epochs": 3, "batches_per_epoch": 3, "steps_asked": 7}  # fmt: skip
    assert results["training"] == saved["training"]


def test_max_epochs_on_the_command_line_decides_over_the_budgets_steps(tiny_mvtec, tmp_path):
    from adkd.run import run

    results = run(compose(_demo(tiny_mvtec, "max_epochs=2"), tmp_path))
    assert results["training"]["epochs"] == 2 and results["training"]["steps"] == 6
    assert results["training"]["steps_asked"] is None


def test_every_methods_demo_recipe_counts_steps_and_its_paper_recipe_epochs(tmp_path):
    from adkd.methods.registry import method_names

    for method in method_names():
        demo = compose([f"method={method}", "budget=demo"], tmp_path)
        paper = compose([f"method={method}", "budget=paper"], tmp_path)
        assert demo.max_epochs is None and demo.steps >= 1, method
        assert paper.max_epochs >= 1, method


def _curve(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_a_loss_still_falling_steeply_is_undertrained_and_one_near_its_floor_is_not():
    steps = torch.arange(40, dtype=torch.float32)
    linear = _curve(10 - 0.125 * steps)  # 10 -> 5: each quarter takes off 1.25, 13% of where it began
    starved = still_learning(linear, 0.03)
    assert starved["undertrained"] and starved["share"] == pytest.approx(1.25 / 9.75, abs=1e-4)
    assert starved["quarter"] == 10 and starved["loss_start"] == pytest.approx(9.75)
    settled = still_learning(_curve(1 + 9 * torch.exp(-steps / 4)), 0.03)  # near its floor by a quarter of the run
    assert not settled["undertrained"] and settled["share"] < 0.01
    # A loss that keeps falling by the same share per step, near its floor: 0.5% of where it began.
    slow = still_learning(_curve(torch.cat([10 * torch.exp(-steps[:8]), 0.1 * 0.99 ** steps[8:]])), 0.03)
    assert not slow["undertrained"]
    assert still_learning(_curve([5, 4, 3, 2, 1, 1, 1]), 0.03) is None  # under 8 steps tell nothing
    assert still_learning(None, 0.03) is None


def test_a_starved_run_warns_and_says_so_in_metrics_json_and_the_report(tiny_mvtec, tmp_path, caplog):
    """STFPM on the fixture at a tenth of its learning rate for 12 steps: its loss is still falling
    steeply at the end. The warning names the knob; the report marks its cells."""
    from adkd.report.tables import UNDERTRAINED, write_report
    from adkd.run import run

    with caplog.at_level(logging.WARNING, logger="adkd.callbacks"):
        results = run(compose(_demo(tiny_mvtec, "steps=12", "lr=0.04"), tmp_path / "run"))
    training = results["training"]
    assert training["undertrained"] is True, training
    assert training["evidence"]["share"] > 0.03 and math.isfinite(training["evidence"]["loss_last"])
    assert "The model may be undertrained" in caplog.text and "steps=24, or budget=converged" in caplog.text
    _, _, md = write_report(tmp_path)
    assert UNDERTRAINED in md.splitlines()[4] and "train it longer" in md
