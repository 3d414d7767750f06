"""Compose the run config from Python (tests, experiment scripts) exactly as the CLI would."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, open_dict

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def compose(overrides: list[str], output_dir: str | Path) -> DictConfig:
    """The config `python -m adkd.run <overrides>` would get, writing its outputs to ``output_dir``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose("run", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.output_dir = str(output_dir)
            del cfg.hydra
    return cfg
