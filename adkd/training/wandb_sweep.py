"""`adkd sweep method=<name> [overrides...] > sweep.yaml`: the W&B sweep of a
method's search space (``search_space`` in conf/method/<name>.yaml: the knobs and ranges that
``hparams_search=optuna`` searches), on the same validation objective, for any registered method.

    adkd sweep method=adps dataset=mvtec dataset.root=datasets/mvtec category=bottle \\
        backbone=wide_resnet50_2 trainer=gpu > sweep_adps.yaml
    wandb sweep sweep_adps.yaml                     # prints a sweep id
    WANDB_MODE=online wandb agent --count 30 <entity>/adkd/<sweep id>

The overrides go into the command of every run of the sweep (one category per sweep), after
``logger=wandb`` and the method. The search space is translated from the Optuna sweeper's grammar
(parsed by Hydra's own override parser): ``choice(...)`` -> values, ``interval(a, b)`` -> uniform,
``tag(log, interval(a, b))`` -> log-uniform, ``range(a, b, s)`` -> values.
"""

from __future__ import annotations

from adkd.errors import ConfigError
from adkd.training.config import compose


def parameter(key: str, expression: str) -> dict:
    """One search dimension in W&B's terms."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    override = OverridesParser.create().parse_override(f"{key}={expression}")
    if override.is_discrete_sweep():  # choice(...), range(...): Hydra lists the values
        return {"values": list(override.sweep_iterator())}
    sweep = override.value()
    if isinstance(sweep, IntervalSweep):
        kind = "log_uniform_values" if "log" in sweep.tags else "uniform"
        return {"distribution": kind, "min": sweep.start, "max": sweep.end}
    return {"value": sweep}


def sweep_config(overrides: list[str]) -> dict:
    """The W&B sweep for ``python -m adkd.run <overrides>``'s method, searching its search space."""
    cfg = compose(list(overrides), "outputs/unused")
    space = cfg.get("search_space") or {}
    if not space:
        raise ConfigError(f"method {cfg.method_name} has no search_space in conf/method/{cfg.method_name}.yaml")
    method = cfg.method_name
    extra = [o for o in overrides if not o.startswith("method=")]
    return {
        "program": "adkd.run",
        "project": "adkd",
        "method": "bayes",
        "metric": {"name": "val/pixel_ap", "goal": "maximize"},
        "command": [
            "${env}",
            "${interpreter}",
            "-m",
            "adkd.run",
            f"method={method}",
            "logger=wandb",
            f"experiment_name={method}-search",
            *extra,
            "${args_no_hyphens}",
        ],
        "parameters": {key: parameter(key, str(value)) for key, value in space.items()},
    }
