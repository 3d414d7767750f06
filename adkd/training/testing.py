"""``adkd test``: a trained model scored on a dataset, as a run's own test scores it: the same
metrics.json, figures, plots and test_predictions.csv, in a folder of its own."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import lightning as L
from omegaconf import OmegaConf

from adkd.data.base import ALL_CATEGORIES
from adkd.data.unified import datamodule as build_datamodule
from adkd.deploy import trust
from adkd.deploy.checkpoints import checkpoint_path, load_model, model_categories
from adkd.errors import ConfigError
from adkd.training.config import compose
from adkd.training.evaluation import Evaluation

log = logging.getLogger("adkd")

# A run's own overrides that say how it trained, not on what data: kept when the data changes.
DATA_KEYS = ("dataset", "category", "dataset.", "+dataset.")


def dataset_config(config: dict, overrides: list[str], source: Path) -> dict:
    """The dataset to test on: the run's own (as stored, checked) without overrides; else the run's
    command with the data overrides applied (``dataset=folder dataset.root=... category=...``)."""
    if not overrides:
        return trust.dataset_config(config, source)
    kept = [o for o in config.get("overrides") or [] if not o.lstrip("+~").startswith(DATA_KEYS)]
    if not any(o.startswith("dataset=") for o in overrides) and config.get("dataset_name"):
        kept.append(f"dataset={config['dataset_name']}")
    with tempfile.TemporaryDirectory() as scratch:
        cfg = compose([*kept, *overrides], scratch)
        return OmegaConf.to_container(cfg.dataset, resolve=True)


def test_model(
    source: Path, overrides: list[str], out: Path | None = None, device: str = "cpu", num_figures: int = 8
) -> tuple[dict, Path]:
    """Score the model of ``source`` (a run folder or .ckpt) on the data ``overrides`` pick;
    returns metrics.json's content and the folder it was written to."""
    path = checkpoint_path(source)
    categories = model_categories(source)
    category = next((o.split("=", 1)[1] for o in overrides if o.startswith("category=")), None)
    if categories and category in (None, ALL_CATEGORIES):
        raise ConfigError(
            f"{source} is one model for the categories {', '.join(categories)}: test one at a time with "
            "category=<one of them>."
        )
    model, config = load_model(source, device, category if categories else None)
    dataset = dataset_config(config, overrides, path)
    datamodule = build_datamodule(OmegaConf.create(dataset))
    datamodule.prepare_data()
    datamodule.setup("test")  # the data checked before any folder is made
    name = f"{dataset.get('name') or config.get('dataset_name')}-{dataset.get('category')}"
    run_folder = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    out = out or run_folder / "tests" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    evaluation = Evaluation(
        str(out),
        num_figures,
        run={
            "method": config.get("method_name"),
            "label": config.get("label"),
            "dataset": config.get("dataset_name"),
            "backbone": (config.get("backbone") or {}).get("name"),
            "image_size": config.get("image_size"),
            "tested": str(path),
            "test_overrides": list(overrides),
            "threshold_fpr": (config.get("threshold") or {}).get("fpr"),
        },
    )
    trainer = L.Trainer(
        accelerator="cuda" if device.startswith("cuda") else "cpu",
        devices=1,
        logger=False,
        callbacks=[evaluation],
        default_root_dir=str(out),
        enable_checkpointing=False,
    )
    trainer.test(model, datamodule=datamodule, verbose=False)
    return json.loads((out / "metrics.json").read_text()), out
