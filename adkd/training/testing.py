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
from adkd.errors import ConfigError, user_error_in
from adkd.training.config import compose
from adkd.training.evaluation import Evaluation
from adkd.training.quiet import quiet_lightning_notes

log = logging.getLogger("adkd")


def dataset_config(config: dict, overrides: list[str], source: Path) -> dict:
    """The dataset to test on: the run's own (as stored, checked), changed by ``overrides``:
    ``category=...`` and ``dataset.<key>=...`` change it in place; ``dataset=<name>`` starts from
    that dataset's config (at the run's image size) instead."""
    dataset = trust.dataset_config(config, source)
    changes = OmegaConf.from_dotlist([o for o in overrides if not o.startswith("dataset=")])
    unknown = [k for k in changes if k not in ("category", "dataset")]
    if unknown:
        raise ConfigError(
            f"adkd test takes dataset=, dataset.<key>= and category= overrides, not {', '.join(unknown)}."
        )
    other = [o.split("=", 1)[1] for o in overrides if o.startswith("dataset=")]
    if other:
        with tempfile.TemporaryDirectory() as scratch:
            cfg = compose([f"dataset={other[-1]}", f"image_size={config.get('image_size')}"], scratch)
            dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    merged = OmegaConf.merge(OmegaConf.create(dataset), changes.get("dataset") or {})
    if "category" in changes:
        merged.category = changes.category
    return OmegaConf.to_container(merged, resolve=True)


def test_model(
    source: Path, overrides: list[str], out: Path | None = None, device: str = "cpu", num_figures: int = 8
) -> tuple[dict, Path]:
    """Score the model of ``source`` (a run folder or .ckpt) on the data ``overrides`` pick;
    returns metrics.json's content and the folder it was written to."""
    quiet_lightning_notes()
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
    try:
        datamodule = build_datamodule(OmegaConf.create(dataset))
        datamodule.prepare_data()
        datamodule.setup("test")  # the data checked before any folder is made
    except Exception as err:
        cause = user_error_in(err)  # Hydra wraps what the datamodule says
        if cause is None:
            raise
        raise cause from err
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
