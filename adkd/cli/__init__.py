"""The ``adkd`` command: ``adkd <command> [arguments]``; ``adkd <command> --help`` for each.

Each command is a module here with ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args)``. Only the chosen command's module is imported, and the modules import the heavy
parts of adkd (torch, Lightning) inside ``run``, so that every ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from adkd.version import __version__

# name -> one line; the order of `adkd --help`.
COMMANDS = {
    "fit": "train and test a method: adkd fit method=adps dataset=mvtec category=bottle (Hydra overrides)",
    "test": "score a trained run or checkpoint on a dataset: metrics, figures and plots",
    "predict": "score images with a trained model: a CSV of scores and decisions, overlays, masks",
    "export": "write a trained model as ONNX, TorchScript or OpenVINO (fp32, fp16, int8), checked against it",
    "serve": "a local web app and HTTP endpoint for one trained run: inspect, choose the threshold, score",
    "report": "per-category tables of runs (with a paper's published numbers beside ours), and curves",
    "check": "check the data of every run a sweep will start, before the first starts",
    "sweep": "write the W&B sweep of a method's search space",
    "submit": "write an MVTec AD 2 submission from trained runs",
    "distill": "distil an EfficientAD teacher (PDN) from a backbone, offline",
    "preview": "draw the synthetic anomalies a method trains on",
    "methods": "list the registered methods",
}

EPILOG = """examples:
  adkd fit                                          ADPS on the embedded textures (brick), on the CPU
  adkd fit method=stfpm dataset=folder dataset.root=my_parts budget=demo
  adkd test outputs/runs/adps/mvtec/bottle/<run> dataset.root=other_bottles
  adkd serve outputs/runs/adps/mvtec/bottle/<run>
  adkd predict outputs/runs/adps/mvtec/bottle/<run> images/ --out predictions
"""


def parser_for(name: str) -> argparse.ArgumentParser:
    """The parser of one command (its module imported, nothing heavy)."""
    module = importlib.import_module(f"adkd.cli.{name}")
    parser = argparse.ArgumentParser(
        prog=f"adkd {name}", description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    module.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    top = argparse.ArgumentParser(
        prog="adkd",
        description="Knowledge-distillation anomaly detection: train, test, deploy.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"adkd {__version__}")
    commands = top.add_subparsers(title="commands", metavar="<command>")
    for name, line in COMMANDS.items():
        commands.add_parser(name, help=line, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        top.parse_args(argv or ["--help"])  # --help, --version, or an unknown command: argparse answers
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(f"adkd.cli.{name}")
    if getattr(module, "PASS_THROUGH", False):  # Hydra's key=value overrides: the command parses them
        return module.run(rest)
    return module.run(parser_for(name).parse_args(rest))
