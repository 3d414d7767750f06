"""`adkd sweep method=<name> [overrides...] > sweep.yaml`: the W&B sweep of a method's search space
(``search_space`` in conf/method/<name>.yaml, the one ``hparams_search=optuna`` searches), on the
same validation objective.

    adkd sweep method=adps dataset=mvtec dataset.root=datasets/mvtec category=bottle \\
        backbone=wide_resnet50_2 trainer=gpu > sweep_adps.yaml
    wandb sweep sweep_adps.yaml                     # prints a sweep id
    WANDB_MODE=online wandb agent --count 30 <entity>/adkd/<sweep id>
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides",
        nargs="+",
        metavar="key=value",
        help="method=<name> and the Hydra overrides every run of the sweep gets",
    )


def run(args: argparse.Namespace) -> int:
    import sys

    import yaml

    from adkd.errors import UserError
    from adkd.methods.registry import method_names
    from adkd.training.wandb_sweep import sweep_config

    if not any(a.startswith("method=") for a in args.overrides):
        print(f"error: give the method: adkd sweep method=<{'|'.join(method_names())}> [overrides...]", file=sys.stderr)
        return 2
    try:
        print(yaml.safe_dump(sweep_config(args.overrides), sort_keys=False), end="")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
