"""`python -m adkd.run [overrides]`: compose the config, train, test, write results.

Writes into the run folder: ``.hydra/config.yaml`` (the resolved config), ``metrics.json``,
``checkpoints/last.ckpt`` and ``figures/*.png``. Heavy imports happen inside ``run`` so that
``--help`` and config errors answer at once.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("adkd")

# Errors whose message already tells the user what to do: printed without a traceback.
USER_ERRORS = ("DatasetNotFoundError", "BackboneWeightsError", "ImageReadError")


def _loggers(cfg: DictConfig) -> list:
    from hydra.utils import instantiate

    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]


def run(cfg: DictConfig) -> dict:
    """Train and test one (method, dataset, category); returns the metrics.json content."""
    import lightning as L
    from hydra.utils import instantiate

    output_dir = Path(cfg.output_dir)
    # Frozen teachers are in eval mode on purpose; Lightning warns about it on every fit.
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    for name in ("lightning.pytorch", "lightning.fabric"):  # they print themselves; not twice via Hydra's root
        logging.getLogger(name).propagate = False
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.dataset)  # checks the data is there (and the category) first
    model = instantiate(cfg.method, _convert_="all")  # plain containers: checkpoints load with weights_only
    model.pixel_metrics = datamodule.has_masks
    loggers = _loggers(cfg)
    try:
        return _fit_and_test(cfg, datamodule, model, loggers, output_dir)
    finally:
        if any(lg.__class__.__name__ == "WandbLogger" for lg in loggers):
            import wandb

            wandb.finish()  # each multirun job gets a W&B run of its own


def _fit_and_test(cfg: DictConfig, datamodule, model, loggers: list, output_dir: Path) -> dict:  # noqa: ANN001
    import lightning as L
    import torch
    from hydra.utils import instantiate

    from adkd.report.figures import save_figures

    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    if trainer.interrupted:
        raise KeyboardInterrupt
    if trainer.world_size > 1:  # metrics need the whole test set in one process
        torch.distributed.barrier()
        if trainer.global_rank != 0:
            return {}
        trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=1, logger=loggers or False,
                            precision=cfg.trainer.precision, default_root_dir=str(output_dir))  # fmt: skip
    trainer.test(model, datamodule=datamodule, verbose=False)

    results = {
        "method": cfg.method_name,
        "label": cfg.get("label") or cfg.method_name,
        "dataset": cfg.dataset_name,
        "category": datamodule.category,
        "backbone": cfg.backbone.name,
        "pretrained": bool(cfg.backbone.pretrained),
        "image_size": cfg.image_size,
        "max_epochs": cfg.max_epochs,
        "seed": cfg.seed,
        "pixel_metrics": datamodule.has_masks,
        "metrics": model.test_metrics,
    }
    (output_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    figures = save_figures(model.figures, output_dir / "figures")
    for lg in loggers:
        if lg.__class__.__name__ == "WandbLogger":
            lg.log_image(key="test/figures", images=[str(p) for p in figures])
            lg.experiment.summary.update({f"test/{k}": v for k, v in model.test_metrics.items()})
    _print_summary(results, output_dir)
    return results


def _print_summary(results: dict, output_dir: Path) -> None:
    m = results["metrics"]
    width = max(len(k) for k in m)
    lines = [f"\n{results['method']} on {results['dataset']}/{results['category']} ({results['backbone']})"]
    lines += [f"  {k:<{width}}  {v:.4f}" for k, v in m.items()]
    if not results["pixel_metrics"]:
        lines.append("  (no pixel masks in this dataset: image-level metrics only)")
    lines.append(f"Outputs: {output_dir}")
    print("\n".join(lines), flush=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="run")
def main(cfg: DictConfig) -> float | None:
    try:
        results = run(cfg)
    except Exception as err:
        if type(err).__name__ in USER_ERRORS or (isinstance(err, ValueError) and "category" in str(err)):
            print(f"\nerror: {err}", file=sys.stderr)
            sys.exit(1)
        raise
    OmegaConf.save(cfg, Path(cfg.output_dir) / "config_resolved.yaml", resolve=True)
    metric = results.get("metrics", {})
    return metric.get("pixel_aupro", metric.get("image_auroc"))  # for sweepers that optimise


if __name__ == "__main__":
    main()
