"""Compose the run config from Python (tests, experiment scripts) exactly as the CLI would, and check
the composed values before anything is built from them."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, open_dict

from adkd.errors import ConfigError

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


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


def _number(kind: type) -> Callable[[object], bool]:
    def is_kind(value: object) -> bool:
        if isinstance(value, bool):
            return False
        return isinstance(value, int) if kind is int else isinstance(value, int | float) and math.isfinite(value)

    return is_kind


_INT, _FLOAT = _number(int), _number(float)

# The top-level keys a user sets, each with what it accepts: checked once, after composing and
# before anything is built or read, so a bad value costs one line and no training.
# (key, accepts None, check, what it must be)
RULES: tuple[tuple[str, bool, Callable[[object], bool], str], ...] = (
    ("image_size", False, lambda v: _INT(v) and 32 <= v <= 8192, "a whole number of pixels from 32 to 8192"),
    ("batch_size", False, lambda v: _INT(v) and v >= 1, "a whole number, 1 or more"),
    (
        "max_epochs",
        True,
        lambda v: _INT(v) and v >= 1,
        "null (as many epochs as `steps` take) or a whole number of epochs, 1 or more",
    ),
    ("steps", True, lambda v: _INT(v) and v >= 1, "null or a whole number of optimiser steps, 1 or more"),
    ("lr", False, lambda v: _FLOAT(v) and v >= 0, "a number above 0 (0 only for a method without an optimiser)"),
    ("seed", False, lambda v: _INT(v) and v >= 0, "a whole number, 0 or more"),
    ("num_figures", False, lambda v: _INT(v) and v >= 0, "a whole number, 0 or more"),
    ("checkpoint_every_n_steps", True, lambda v: _INT(v) and v >= 1, "null or a whole number of steps, 1 or more"),
    (
        "threshold.fpr",
        False,
        lambda v: _FLOAT(v) and 0 < v < 1,
        "a share of normal validation images, above 0 and below 1 (e.g. 0.01)",
    ),
    ("threshold.mode", False, lambda v: v in ("fpr", "f1"), "fpr or f1"),
    ("threshold.image", True, _FLOAT, "null or a number, in the method's score units"),
    ("threshold.pixel", True, _FLOAT, "null or a number, in the method's map units"),
    ("segmentation.rule", True, lambda v: v in ("mean_std", "fpr"), "null, mean_std or fpr"),
    ("segmentation.k", False, lambda v: _FLOAT(v) and v >= 0, "a number of standard deviations, 0 or more"),
    ("dataset.val_fraction", True, lambda v: _FLOAT(v) and 0 <= v < 1, "a share of the training images, 0 to below 1"),
    ("dataset.num_workers", False, lambda v: _INT(v) and v >= 0, "a whole number, 0 or more"),
    ("teacher_cache.enabled", False, lambda v: isinstance(v, bool), "true or false"),
    ("teacher_cache.max_gb", False, lambda v: _FLOAT(v) and v >= 0, "a number of gigabytes, 0 or more"),
    (
        "teacher_cache.dtype",
        True,
        lambda v: v in ("float32", "float16", "bfloat16"),
        "null, float32, float16 or bfloat16",
    ),
)


def validate(cfg: DictConfig) -> None:
    """Every value in :data:`RULES` is what it must be, or a ConfigError naming the key, the valid
    range and the value given."""
    from omegaconf import OmegaConf

    for key, nullable, check, expected in RULES:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is None and nullable:
            continue
        if value is None or not check(value):
            raise ConfigError(f"{key}={value!r} is not valid: {key} must be {expected}.")
    if OmegaConf.select(cfg, "method.optimizer") is not None and not cfg.lr > 0:
        raise ConfigError(f"lr={cfg.lr!r} is not valid: lr must be a number above 0 for a method that optimises.")


# Spellings of earlier versions, still accepted on the command line (scripts and sweeps use them):
# the post-processing knobs moved from method.* to the post group, the synthetic anomalies from
# method.synthesis to synthesis, and each network's settings from method.* to method.network.*.
POST_KEYS = ("map_sigma", "score_sigma", "score", "topk")


def upgrade_overrides(arguments: list[str]) -> tuple[list[str], list[str]]:
    """Command-line overrides with old spellings rewritten, and one note per rewrite."""
    from omegaconf import OmegaConf

    methods = [a.split("=", 1)[1] for a in arguments if a.startswith("method=")]
    defaults = [
        d["method"]
        for d in OmegaConf.load(Path(CONF_DIR) / "run.yaml").defaults
        if not isinstance(d, str) and "method" in d
    ]
    name = methods[0].split(",")[0] if methods else defaults[0]  # a multirun's first method, or run.yaml's
    path = Path(CONF_DIR) / "method" / f"{name}.yaml"
    method = OmegaConf.load(path).get("method", {}) if path.is_file() else {}
    network = method.get("network") or {}
    upgraded, notes = [], []
    method_names = {p.stem for p in (Path(CONF_DIR) / "method").glob("*.yaml")}
    for argument in arguments:
        key, sep, value = argument.partition("=")
        bare = key.lstrip("+~")
        if bare == "hparams_search" and value in method_names:  # one search config serves every method
            upgraded += ["hparams_search=optuna", f"method={value}"]
            notes.append(
                f"note: hparams_search={value} is now hparams_search=optuna method={value} (the old spelling still works)"
            )
            continue
        parts = bare.split(".")
        new = None
        if sep and len(parts) >= 2 and parts[0] == "method":
            first = parts[1]
            if first in POST_KEYS and len(parts) == 2:
                new = f"post.{first}"
            elif first == "synthesis":
                new = ".".join(parts[1:])
            elif first not in method and first in network:
                new = ".".join(["method", "network", *parts[1:]])
        if new is None:
            upgraded.append(argument)
            continue
        upgraded.append(f"{key[: len(key) - len(bare)]}{new}={value}")
        notes.append(f"note: {bare} is now {new} (the old spelling still works)")
    return upgraded, notes


def upgrade_stored_method(method: dict) -> dict:
    """A method config stored in a checkpoint by an earlier version (the network's settings, the
    backbone and the post-processing knobs all under ``method``) in today's layout; the weights'
    names did not change. Today's configs pass unchanged."""
    from omegaconf import OmegaConf

    if not isinstance(method, dict) or "network" in method or not isinstance(method.get("backbone"), dict):
        return method
    target = method.get("_target_")
    for path in sorted((Path(CONF_DIR) / "method").glob("*.yaml")):
        spec = OmegaConf.to_container(OmegaConf.load(path)).get("method", {})
        if spec.get("_target_") == target and isinstance(spec.get("network"), dict):
            break
    else:
        return method  # not a method of this version: the checks that follow say so
    old = dict(method)
    backbone = old.pop("backbone")
    network = {
        "_target_": spec["network"]["_target_"],
        "backbone": backbone.get("name"),
        "pretrained": False,
        "weights": None,
    }
    for key in spec["network"]:
        if key in old and key != "_target_":
            network[key] = old.pop(key)
    post = {key: old.pop(key) for key in POST_KEYS if key in old}
    keep = set(spec) | {"optimizer", "scheduler"}
    upgraded = {key: value for key, value in old.items() if key in keep}
    return {**upgraded, "network": network, "post": {**old.get("post", {}), **post}}
