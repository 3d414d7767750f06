"""Recipes counted in optimiser steps, and runs that stopped while still learning."""

import json
import logging

import pytest
import torch

from adkd.training.callbacks import still_learning
from adkd.training.config import compose
from tests.conftest import tiny_overrides


def _demo(root, *extra: str) -> list[str]:
    return [o for o in tiny_overrides(root, "method=stfpm", "budget=demo", *extra) if o != "max_epochs=1"]


def test_demo_steps_become_the_epochs_they_take_on_this_training_set(tiny_mvtec, tmp_path, caplog):
    """The fixture's 11 training images at batch 4 are 3 batches an epoch: 7 steps take 3 epochs (9
    steps), printed at the start and kept in metrics.json; 50 images would take 1 epoch per 13 batches."""
    from adkd.training.run import run

    cfg = compose(_demo(tiny_mvtec, "steps=7"), tmp_path)
    assert cfg.max_epochs is None and cfg.steps == 7
    with caplog.at_level(logging.INFO, logger="adkd.training.callbacks"):
        results = run(cfg)
    assert "Training: 7 steps = 3 epochs of 3 batches (11 training images): 9 optimiser steps" in caplog.text
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["steps"] == 7 and saved["max_epochs"] is None
    assert {k: saved["training"][k] for k in ("steps", "epochs", "batches_per_epoch", "steps_asked")} == {
        "steps": 9,
        "epochs": 3,
        "batches_per_epoch": 3,
        "steps_asked": 7,
    }
    assert results["training"] == saved["training"]


def test_max_epochs_on_the_command_line_decides_over_the_budgets_steps(tiny_mvtec, tmp_path):
    from adkd.training.run import run

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


def _fit_end(earlier: float | None, end: float, losses=None, **kwargs) -> tuple[dict, int]:
    """TrainingLength's verdict for a run of 40 steps whose loss went ``losses`` (settled by default)
    and whose validation pixel AUROC was ``earlier`` at 3/4 of them and ``end`` at the end."""
    from types import SimpleNamespace

    from adkd.training.callbacks import TrainingLength

    length = TrainingLength(steps=40, **kwargs)
    length.batches, length.planned = 4, 40
    length.earlier = None if earlier is None else {"val/pixel_auroc": earlier}
    settled = 1 + 9 * torch.exp(-torch.arange(40.0) / 4)  # near its floor by a quarter of the run
    length.losses = list(settled if losses is None else losses)
    trainer = SimpleNamespace(
        global_step=40, current_epoch=10, callbacks=[], callback_metrics={"val/pixel_auroc": torch.tensor(end)}
    )
    length.on_fit_end(trainer, None)
    return length.summary, length.checkpoint_step


def test_a_run_whose_validation_still_moved_in_its_last_quarter_is_undertrained(caplog):
    with caplog.at_level(logging.WARNING, logger="adkd.training.callbacks"):
        rising, step = _fit_end(0.80, 0.85)
    assert step == 30 and rising["undertrained"] is True
    assert rising["evidence"]["validation"] == {
        "metric": "val/pixel_auroc",
        "step_before": 30,
        "before": 0.8,
        "end": 0.85,
        "moved": 0.05,
    }
    assert "moved from 0.800 at step 30 to 0.850" in caplog.text and "Train longer: steps=80" in caplog.text
    assert _fit_end(0.80, 0.61)[0]["undertrained"] is True  # a jump down is no more settled (RD4AD at 40 steps)
    assert _fit_end(0.84, 0.845)[0]["undertrained"] is False  # within 0.01, and the loss at its floor: trained
    assert _fit_end(0.84, 0.845, moving=0.001)[0]["undertrained"] is True
    assert _fit_end(None, 0.9, losses=[])[0]["undertrained"] is None  # nothing to judge by


def test_a_run_whose_loss_still_fell_steeply_is_undertrained_however_flat_its_validation(caplog):
    """STFPM on 54 bricks at 20 steps: validation flat near chance, the loss still falling."""
    with caplog.at_level(logging.WARNING, logger="adkd.training.callbacks"):
        summary, _ = _fit_end(0.616, 0.618, losses=torch.linspace(10, 5, 40))  # 10 -> 5: 1.28 a quarter
    assert summary["undertrained"] is True
    assert summary["evidence"]["loss"]["share_of_start"] == pytest.approx((50 / 39) / (10 - 10 / 39), abs=1e-4)
    assert summary["evidence"]["loss"]["per_step"] == pytest.approx((50 / 39) / (10 - 10 / 39) / 10, abs=1e-5)
    assert "still fell by 1.32% of where it began a step over its last 10 steps (over 0.50%)" in caplog.text
    assert _fit_end(0.616, 0.618, losses=torch.linspace(10, 5, 40), falling=0.02)[0]["undertrained"] is False


def test_the_loss_evidence_needs_eight_steps():
    assert still_learning(torch.tensor([5.0, 4, 3, 2, 1, 1, 1])) is None and still_learning(None) is None
    steps = still_learning(torch.linspace(10, 5, 40))
    assert steps["quarter_before_last"] > steps["last_quarter"] and steps["steps"] == 10


def test_scoring_the_model_in_the_middle_of_training_changes_nothing_it_learns(tiny_mvtec, tmp_path):
    """DHKD draws its feature noise from torch's global generator and trains a flow in train mode: the
    score at 3/4 of the steps must leave both as it found them, so the run equals one scored only at the end."""
    from adkd.training.run import run

    scored = run(compose(_demo(tiny_mvtec, "method=dhkd", "steps=24"), tmp_path / "scored"))
    unscored = run(
        compose(
            _demo(tiny_mvtec, "method=dhkd", "steps=24", "callbacks.training_length.share_before=2"),
            tmp_path / "unscored",
        )
    )
    assert scored["training"]["evidence"]["validation"]["step_before"] == 18
    assert unscored["training"]["evidence"]["validation"] is None
    timeless = [{k: v for k, v in r["metrics"].items() if k != "inference_ms_per_image"} for r in (scored, unscored)]
    assert timeless[0] == timeless[1] and scored["validation"] == unscored["validation"]


def test_the_report_marks_the_cells_of_undertrained_runs(tmp_path):
    from adkd.report.tables import UNDERTRAINED, write_report

    for seed, undertrained in ((0, True), (1, False)):
        folder = tmp_path / str(seed)
        folder.mkdir()
        result = {
            "method": "stfpm",
            "dataset": "textures",
            "category": "brick",
            "seed": seed,
            "metrics": {"image_auroc": 0.9, "pixel_auroc": 0.8, "pixel_aupro": 0.7, "pixel_ap": 0.2},
            "training": {"undertrained": undertrained},
        }
        (folder / "metrics.json").write_text(json.dumps(result))
    _, _, md = write_report(tmp_path)
    assert f"| brick | 90.0{UNDERTRAINED} | 80.0{UNDERTRAINED} |" in md and "train it longer" in md
    (tmp_path / "0" / "metrics.json").unlink()
    assert UNDERTRAINED not in write_report(tmp_path)[2]
