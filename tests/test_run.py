"""The real configs and the real CLI, on tiny data."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adkd.training.config import compose
from tests.conftest import (
    SLOW_IMAGE_SIZE,
    fixture_seed,
    fixture_steps,
    method_params,
    smallest_image,
    tiny_overrides,
)

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


FLOOR = 0.9  # image and pixel AUROC every method reaches on the fixture's white squares


def finds_the_square(results: dict) -> bool:
    """Image and pixel AUROC at least FLOOR on the test split (4 normal images, 4 with a square)."""
    metrics = results["metrics"]
    return metrics["image_auroc"] >= FLOOR and metrics["pixel_auroc"] >= FLOOR


def floor_run(method: str, root: Path, out: Path, *extra: str) -> dict:
    """A method as its yaml builds it, with its small-data settings (budget=demo's batch size and
    rate; :func:`fixture_steps`) and the offline ImageNet weights of mobilenet_v2, on the
    32 px fixture (resized up for a method that needs larger images): a few seconds each."""
    from adkd.training.run import run

    steps, seed = f"steps={fixture_steps(method)}", f"seed={fixture_seed(method)}"
    overrides = [o for o in tiny_overrides(root, steps, seed) if o != "max_epochs=1"]  # the steps decide
    if smallest_image(method) >= SLOW_IMAGE_SIZE:  # EfficientAD: its recipe's batch 1 (at 256 px, 4 s a step)
        overrides = [o for o in overrides if o != "batch_size=4"]
    size = f"image_size={smallest_image(method)}"  # the fixture's 32 px, or the method's smallest
    return run(compose([*overrides, f"method={method}", "budget=demo", "backbone.pretrained=true", size, *extra], out))


@pytest.mark.parametrize("method", method_params())
def test_every_method_finds_the_square_and_writes_its_run_folder(method, tiny_mvtec, tmp_path):
    results = floor_run(method, tiny_mvtec, tmp_path)
    assert results["method"] == method and results["category"] == "widget"
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert metrics == results["metrics"]
    assert finds_the_square(results), (
        f"{method}: image AUROC {metrics['image_auroc']:.3f}, pixel AUROC "
        f"{metrics['pixel_auroc']:.3f}; a working method reaches {FLOOR}"
    )
    assert set(metrics) >= {"image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "pixel_aupro", "pixel_f1max"}
    assert all(0.0 <= metrics[k] <= 1.0 for k in metrics if k != "inference_ms_per_image" and metrics[k] is not None)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["00_normal.png", "01_anomalous.png"]
    curves = ["image_pr.png", "image_roc.png", "pixel_pr.csv", "pixel_pr.png", "score_histogram.png"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [*curves, "worst_fn_00.png", "worst_fp_00.png"]
    validation = results["validation"]  # the validation images with synthetic anomalies, not the test split
    assert 0.0 <= validation["pixel_ap"] <= 1.0 and 0.0 <= validation["image_auroc"] <= 1.0


SMALL_FOLDER_FLOOR = {"pixel_auroc": 0.85, "image_auroc": 0.75}  # every method at budget=demo on 50 training bricks


@pytest.fixture(scope="session")
def textures_root(tmp_path_factory) -> Path:
    """The embedded textures, generated once for the session (a few seconds), whichever worker asks first."""
    from filelock import FileLock

    from adkd.data.textures import TexturesDataModule

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    with FileLock(str(shared / "textures.lock")):
        TexturesDataModule(root=str(shared / "textures"), category="brick").prepare_data()
    return shared / "textures"


@pytest.mark.slow
@pytest.mark.parametrize("method", method_params())
def test_every_methods_demo_recipe_learns_from_a_small_folder(method, textures_root, tmp_path):
    """budget=demo as a user with 50 good images gets it: brick's first 50 training crops (at 64 px,
    EfficientAD at its 256), the recipe's own steps and settings. Counted in epochs (ten of them:
    20 steps at STFPM's batch 32), STFPM's recipe failed here: pixel AUROC 0.64 (``steps=20``)."""
    from adkd.training.run import run

    size = max(64, smallest_image(method))
    results = run(
        compose(
            [
                "dataset=textures",
                "category=brick",
                f"dataset.root={textures_root}",
                f"method={method}",
                "dataset.limit_train=50",
                f"image_size={size}",
                "num_figures=0",
                "logger=none",
            ],
            tmp_path,
        )
    )
    metrics = {k: round(results["metrics"][k], 3) for k in SMALL_FOLDER_FLOOR}
    assert all(metrics[k] >= floor for k, floor in SMALL_FOLDER_FLOOR.items()), (method, metrics, results["training"])


@pytest.mark.parametrize("blind", ["constant", "brightness"])
def test_the_floor_fails_a_network_blind_to_anomalies(blind, tiny_mvtec, tmp_path, monkeypatch):
    """The check above, on STFPM with its map replaced by one that cannot see a defect: a constant,
    or each image's mean brightness everywhere (which even ranks the images with a square first)."""
    from adkd.methods.stfpm import STFPMNetwork

    def blind_map(self, images):  # noqa: ANN001, ANN202
        level = images.mean(dim=(1, 2, 3), keepdim=True) if blind == "brightness" else images.new_ones(1, 1, 1, 1)
        return level.expand(len(images), 1, *images.shape[-2:])

    monkeypatch.setattr(STFPMNetwork, "anomaly_map", blind_map)
    assert not finds_the_square(floor_run("stfpm", tiny_mvtec, tmp_path, "max_epochs=1"))


def test_a_nan_training_loss_ends_the_run_with_a_clear_error_and_keeps_the_last_finite_checkpoint(
    tiny_mvtec, tmp_path, monkeypatch
):
    import torch

    from adkd.errors import TrainingDivergedError
    from adkd.methods.stfpm import STFPM

    finite_loss = STFPM.loss

    def diverging(self, batch):  # noqa: ANN001, ANN202
        loss = finite_loss(self, batch)
        return loss * torch.nan if self.current_epoch == 1 else loss  # epoch 0 is finite

    monkeypatch.setattr(STFPM, "loss", diverging)
    with pytest.raises(TrainingDivergedError, match=r"mean training loss of epoch 1 is nan\. Lower the learning rate"):
        floor_run("stfpm", tiny_mvtec, tmp_path, "max_epochs=3")
    kept = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    weights = [v for k, v in kept["state_dict"].items() if k.startswith("network.")]  # thresholds are NaN until set
    assert kept["epoch"] == 0 and weights and all(torch.isfinite(v).all() for v in weights)
    assert not (tmp_path / "metrics.json").exists()


def test_sweep_objective_is_a_validation_metric():
    from adkd.errors import ConfigError
    from adkd.training.run import objective

    results = {"metrics": {"pixel_ap": 0.9}, "validation": {"pixel_ap": 0.4}}
    assert objective(results, "val/pixel_ap") == 0.4 and objective(results, None) is None
    with pytest.raises(ConfigError, match="must be a validation metric"):
        objective(results, "test/pixel_ap")
    with pytest.raises(ConfigError, match="has no validation 'aupro'"):
        objective(results, "val/aupro")


def test_training_resumes_from_last_checkpoint(tiny_mvtec, tmp_path):
    import torch

    from adkd.training.run import run

    run(compose(tiny_overrides(tiny_mvtec), tmp_path / "a"))
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    first = torch.load(ckpt, weights_only=False)
    assert (first["epoch"], first["global_step"]) == (1, 3)  # rewritten after training; 11 images, batch 4
    assert first["state_dict"]["post.image_threshold"] > 0  # the calibrated thresholds travel with it
    run(compose(tiny_overrides(tiny_mvtec, "max_epochs=2", f"ckpt_path={ckpt}"), tmp_path / "b"))
    second = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)
    assert (second["epoch"], second["global_step"]) == (2, 6)  # one more epoch, not two


def test_image_only_dataset_reports_image_metrics_only(tmp_path):
    from adkd.training.run import run

    cfg = compose(
        [
            "dataset=elpv",
            "image_size=32",
            "max_epochs=1",
            "backbone.pretrained=false",
            "logger=none",
            "dataset.limit_train=8",
            "dataset.limit_test=12",
            "batch_size=4",
        ],
        tmp_path,
    )
    results = run(cfg)
    assert set(results["metrics"]) == {
        "image_auroc",
        "image_ap",
        "image_f1max",
        "inference_ms_per_image",
        "image_f1",
        "image_precision",
        "image_recall",
        "image_fpr",
    }
    assert results["pixel_metrics"] is False
    assert not (tmp_path / "plots" / "pixel_pr.png").exists() and (tmp_path / "plots" / "image_pr.png").is_file()


def test_cli_missing_dataset_and_wrong_category(tmp_path):
    missing = cli("adkd.run", "dataset=mvtec", f"dataset.root={tmp_path / 'mvtec'}", cwd=tmp_path)
    assert missing.returncode == 1
    assert f"not found at {tmp_path / 'mvtec' / 'bottle'}" in missing.stderr
    assert "Traceback" not in missing.stderr
    typo = cli("adkd", "fit", "dataset=elpv", "category=mnoo", cwd=tmp_path)
    assert typo.returncode == 1 and typo.stderr.strip().splitlines()[-1] == (
        "error: Unknown category 'mnoo' for dataset elpv. Valid categories: mono, poly."
    )
    assert not (tmp_path / "outputs").exists()  # checked before Hydra makes a run folder
    from adkd.data.unified import datamodule
    from adkd.errors import user_error_in

    with pytest.raises(Exception) as wrong:  # Hydra wraps it; the CLI prints it as the one-line error above
        datamodule(compose(["dataset=elpv", "category=mnoo"], tmp_path).dataset)
    assert "Valid categories: mono, poly." in str(user_error_in(wrong.value))


def test_multirun_then_report_gives_the_per_category_table(tiny_mvtec, tmp_path):
    if not (tiny_mvtec / "gadget").exists():
        shutil.copytree(tiny_mvtec / "widget", tiny_mvtec / "gadget")
    overrides = [o for o in tiny_overrides(tiny_mvtec) if not o.startswith("category=")]
    res = cli(
        "adkd.run",
        "-m",
        "method=rd4ad,stfpm",
        "category=widget,gadget",
        *overrides,
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list((tmp_path / "sweep").rglob("metrics.json"))) == 4
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1", "2", "3"]  # short
    rep = cli("adkd.report", str(tmp_path / "sweep"), cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    md = (tmp_path / "sweep" / "results.md").read_text().splitlines()
    assert md[2].startswith("| category | rd4ad image_auroc | rd4ad pixel_auroc |")
    assert [line.split(" | ")[0] for line in md[4:]] == ["| widget", "| gadget", "| mean"]
    csv_rows = (tmp_path / "sweep" / "results.csv").read_text().splitlines()
    assert len(csv_rows) == 4 and csv_rows[0].count("stfpm") == 4


def test_wandb_logs_offline_without_an_account(tiny_mvtec, tmp_path, monkeypatch):
    from adkd.training.run import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run(compose(tiny_overrides(tiny_mvtec, "logger=wandb", "experiment_name=unit"), tmp_path))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1  # ready for `wandb sync`
    images = runs[0] / "files" / "media" / "images"
    logged = sorted(p.relative_to(images).as_posix().rsplit("_", 2)[0] for p in images.rglob("*.png"))  # key_step_hash
    curves = [f"test/plots/{name}" for name in ("image_pr", "image_roc", "pixel_pr", "score_histogram")]
    assert logged == ["test/figures", "test/figures", *curves, "test/worst_fn", "test/worst_fp"]
    records, deadline = b"", time.time() + 30
    while b"test/pixel_aupro" not in records and time.time() < deadline:  # W&B's service writes the file after finish
        records = next(runs[0].glob("run-*.wandb")).read_bytes()
        time.sleep(0.2)
    assert b"test/pixel_aupro" in records and b"train/loss" in records  # metrics in the run file
    import wandb

    assert wandb.run is None  # finished: the next job starts its own run


def test_report_gives_each_labelled_variant_its_own_column():
    from adkd.report.tables import build_table

    def result(label, category, auroc):
        return {
            "method": "adps",
            "label": label,
            "category": category,
            "backbone": "mobilenet_v2",
            "metrics": {"image_auroc": auroc},
        }

    header, rows = build_table(
        [result("adps", "a", 0.9), result("adps-k1", "a", 0.5), result("adps", "b", 0.7), result("adps-k1", "b", 0.6)],
        metrics=("image_auroc",),
    )
    assert header == ["category", "adps image_auroc", "adps-k1 image_auroc"]
    assert rows == [["a", "90.0", "50.0"], ["b", "70.0", "60.0"], ["mean", "80.0", "55.0"]]


def test_budget_decides_epochs_batch_and_rate_with_visible_precedence(tmp_path):
    def knobs(*overrides):
        cfg = compose(list(overrides), tmp_path)
        early = cfg.callbacks.early_stopping is not None
        return cfg.max_epochs, cfg.steps, cfg.batch_size, cfg.method.optimizer.lr, early

    assert knobs("method=adps", "dataset=elpv") == (None, 200, 8, 1e-3, False)  # embedded set: demo budget, in steps
    assert knobs("method=adps", "dataset=mvtec") == (300, None, 32, 1e-4, False)  # the paper's recipe, in epochs
    assert knobs("method=rd4ad", "dataset=elpv") == (None, 200, 16, 0.005, False)
    paper = knobs("method=adps", "dataset=textures", "experiment=adps_paper")
    assert paper == (300, None, 32, 1e-4, False)  # no mixing
    uninet = compose(["dataset=textures", "experiment=uninet_paper"], tmp_path)
    assert (uninet.max_epochs, uninet.batch_size, uninet.image_size, uninet.backbone.name) == (
        100,
        8,
        256,
        "wide_resnet50_2",
    )
    assert uninet.method.network.target_batch_statistics is True  # the official code's
    assert knobs("method=dhkd", "dataset=textures", "budget=converged") == (100, None, 8, 1e-3, True)
    assert knobs("method=adps", "dataset=elpv", "batch_size=4", "lr=0.01")[2:4] == (4, 0.01)  # command line wins


def test_report_averages_seeds():
    from adkd.report.tables import build_table

    runs = [
        {"method": "rd4ad", "category": "a", "seed": s, "metrics": {"image_auroc": v}} for s, v in [(0, 0.8), (1, 0.6)]
    ]
    assert build_table(runs, metrics=("image_auroc",))[1] == [["a", "70.0"], ["mean", "70.0"]]


def test_report_writes_into_a_new_out_folder(tmp_path):
    import json

    from adkd.cli import main as adkd

    run = tmp_path / "runs" / "0_category=a"
    run.mkdir(parents=True)
    result = {"method": "rd4ad", "dataset": "elpv", "category": "a", "metrics": {"image_auroc": 0.75}}
    (run / "metrics.json").write_text(json.dumps(result))
    assert (
        adkd(["report", str(tmp_path / "runs"), "--metrics", "image_auroc", "--out", str(tmp_path / "new" / "tables")])
        == 0
    )
    assert "| a | 75.0 |" in (tmp_path / "new" / "tables" / "results.md").read_text()


def test_report_rows_follow_the_job_order(tmp_path):
    import json

    from adkd.report.tables import collect

    for job, category in [(2, "b"), (10, "c"), (1, "a")]:
        run = tmp_path / f"{job}_category={category}"
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps({"method": "rd4ad", "category": category, "metrics": {}}))
    assert [r["category"] for r in collect(tmp_path)] == ["a", "b", "c"]


def _result(category, metrics, **settings):
    return {"method": "rd4ad", "dataset": "folder", "category": category, "metrics": metrics, **settings}


def test_report_never_merges_runs_that_differ_in_more_than_seed():
    from adkd.report.tables import build_table

    runs = [
        _result("a", {"image_auroc": 0.9}, image_size=64, seed=0, overrides=["image_size=64", "seed=0"]),
        _result("a", {"image_auroc": 0.7}, image_size=64, seed=1, overrides=["image_size=64", "seed=1"]),
        _result("a", {"image_auroc": 0.5}, image_size=96, seed=0, overrides=["image_size=96", "seed=0"]),
    ]
    header, rows = build_table(runs, metrics=("image_auroc",))
    assert header == ["category", "rd4ad image_size=64 image_auroc", "rd4ad image_size=96 image_auroc"]
    assert rows[0] == ["a", "80.0", "50.0"]  # the two seeds of 64 px averaged, 96 px apart


def test_report_keeps_undefined_metrics_out_of_means_and_formats_by_kind():
    from adkd.report.tables import build_table

    runs = [
        _result("a", {"image_auroc": 0.8, "inference_ms_per_image": 0.8}),
        _result(None, {"image_auroc": None, "inference_ms_per_image": 12.5}),  # a folder run: no category
    ]
    header, rows = build_table(runs, metrics=("image_auroc", "inference_ms_per_image"))
    assert rows == [["a", "80.0", "0.80"], ["-", "n/a", "12.50"], ["mean", "n/a", "6.65"]]


def test_report_lists_runs_that_did_not_finish(tmp_path):
    from adkd.report.tables import write_report
    from adkd.training.runs import write_status

    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "metrics.json").write_text(json.dumps(_result("a", {"image_auroc": 0.75})))
    write_status(tmp_path / "0", "finished")
    write_status(tmp_path / "1", "failed", error="Cannot read image x.png")
    write_status(tmp_path / "2", "interrupted", checkpoint="2/checkpoints/last.ckpt")
    md = write_report(tmp_path, ("image_auroc",))[2]
    assert "| a | 75.0 |" in md
    assert "- 1: failed (Cannot read image x.png)" in md
    assert "- 2: interrupted (resume from 2/checkpoints/last.ckpt)" in md


def test_resume_picks_the_newest_unfinished_run_of_the_same_command(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from adkd.training import runs

    parent = tmp_path / "outputs" / "rd4ad" / "folder" / "widget"

    def make(name: str, status: str, overrides: list[str]) -> Path:
        folder = parent / name
        (folder / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
        runs.write_status(folder, status)
        time.sleep(0.01)
        return folder

    same = ["method=rd4ad", "max_epochs=5"]
    make("a", "interrupted", same)
    newest = make("b", "interrupted", [*same, "resume=true"])  # relaunched once already
    make("c", "finished", same)
    make("d", "interrupted", ["method=rd4ad", "max_epochs=6"])  # another command
    assert runs.find_resumable(parent, [*same, "resume=true"]) == newest
    assert runs.find_resumable(parent, ["method=rd4ad"]) is None
    root = OmegaConf.create({"hydra": {"overrides": {"task": [*same, "resume=true"]}}})
    chosen = runs.run_dir(str(tmp_path / "outputs"), "rd4ad", "folder", "widget", True, _root_=root)
    assert chosen == str(newest)
    fresh = runs.run_dir(str(tmp_path / "outputs"), "rd4ad", "folder", "widget", False, _root_=root)
    assert Path(fresh).parent == parent and Path(fresh).name not in "abcd"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # a requeued SLURM job resumes without the flag
    assert runs.resume_requested(False)


def test_every_checkpoint_load_refuses_pickled_code():
    import re

    sources = [p.read_text() for p in (ROOT / "adkd").rglob("*.py")]
    loads = [call for src in sources for call in re.findall(r"torch\.load\([^)]*\)", src)]
    assert loads and all("weights_only=True" in call for call in loads), loads


@pytest.mark.parametrize("debug", ["fdr", "overfit", "limit", "profiler"])
def test_debug_configs_compose_onto_the_cpu_without_a_logger(debug, tmp_path):
    cfg = compose([f"debug={debug}"], tmp_path)  # (trainer=gpu on the command line still wins: debug on a GPU)
    assert cfg.trainer.accelerator == "cpu" and cfg.dataset.num_workers == 0
    assert list(cfg.get("logger") or {}) == (["csv"] if debug == "overfit" else [])  # overfit: the loss per epoch
    assert cfg.max_epochs == {"fdr": 1, "overfit": 20, "limit": 2, "profiler": 1}[debug]


def test_overfitting_two_batches_drives_the_training_loss_down(tiny_mvtec, tmp_path):
    import csv

    from adkd.training.run import run

    overrides = tiny_overrides(tiny_mvtec, "method=stfpm", "debug=overfit", "max_epochs=8", "logger=csv")
    run(compose(overrides, tmp_path))
    rows = list(csv.DictReader((tmp_path / "logs" / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 8 and losses[-1] < 0.25 * losses[0]  # 0.11 of it after 8 epochs (seed 0)


def test_a_fast_dev_run_writes_the_config_tree_and_tags(tiny_mvtec, tmp_path):
    from adkd.training.run import run

    results = run(compose(tiny_overrides(tiny_mvtec, "debug=fdr", "tags=[smoke,widget]"), tmp_path))
    assert results["tags"] == ["smoke", "widget"]
    tree = (tmp_path / "config_tree.txt").read_text()
    assert tree.startswith("config") and "fast_dev_run: true" in tree and "adkd.methods.adps.ADPS" in tree


def test_the_output_root_comes_from_the_paths_config(tiny_mvtec, tmp_path):
    elsewhere = f"paths.output_root={tmp_path / 'elsewhere'}"
    res = cli("adkd.run", *tiny_overrides(tiny_mvtec, "method=stfpm", "debug=fdr"), elsewhere, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(list((tmp_path / "elsewhere" / "runs" / "stfpm" / "folder" / "widget").iterdir())) == 1


def test_the_segmentation_threshold_travels_from_calibration_to_the_evaluation():
    from types import SimpleNamespace

    import torch

    from adkd.training.callbacks import Calibrate
    from adkd.training.evaluation import Evaluation

    trainer = SimpleNamespace(callback_metrics={}, loggers=[], global_step=0, callbacks=[])
    maps = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    Calibrate(segmentation_rule="mean_std", segmentation_k=2.0)._segmentation_threshold(trainer, maps, 9.0)
    evaluation = Evaluation("unused")
    evaluation.on_fit_end(trainer, None)
    assert evaluation.segmentation_threshold == pytest.approx(2.5 + 2 * 1.25**0.5)
    assert Evaluation("unused").segmentation_threshold is None  # no rule: no segmentation F1


@pytest.mark.slow
def test_a_dataset_that_asks_for_the_segmentation_f1_gets_it_at_a_validation_threshold(tiny_mvtec, tmp_path):
    from adkd.errors import ConfigError
    from adkd.training.config import validate
    from adkd.training.run import run

    results = run(compose(tiny_overrides(tiny_mvtec, "method=stfpm", "segmentation.rule=fpr"), tmp_path))
    thresholds, metrics = results["thresholds"], results["metrics"]
    assert thresholds["segmentation"] == thresholds["pixel"]  # rule fpr: the calibrated pixel threshold, handed on
    assert 0.0 <= metrics["pixel_seg_f1"] <= 1.0
    with pytest.raises(ConfigError, match="segmentation.rule"):
        validate(compose(tiny_overrides(tiny_mvtec, "segmentation.rule=otsu"), tmp_path))
