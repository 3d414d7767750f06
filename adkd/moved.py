"""Where modules of earlier versions went. ``python -m adkd.predict ...`` runs ``adkd predict ...``
after one line naming the new command; ``import adkd.inference`` gives the module it became,
with a FutureWarning naming it. Installed by ``adkd/__init__.py``."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

from adkd.cli import main

MODULES = {
    "adkd.callbacks": "adkd.training.callbacks",
    "adkd.config": "adkd.training.config",
    "adkd.devices": "adkd.training.devices",
    "adkd.evaluation": "adkd.training.evaluation",
    "adkd.launch_checks": "adkd.training.launch_checks",
    "adkd.runs": "adkd.training.runs",
    "adkd.wandb_sweep": "adkd.training.wandb_sweep",
    "adkd.preview_synthesis": "adkd.training.preview",
    "adkd.trust": "adkd.deploy.trust",
    "adkd.inference": "adkd.deploy.checkpoints",
    "adkd.operating_point": "adkd.deploy.operating_point",
    "adkd.export": "adkd.deploy.export",
    "adkd.openvino_export": "adkd.deploy.openvino",
    "adkd.predict": "adkd.deploy.predict",
    "adkd.serve": "adkd.deploy.serve",
    "adkd.mvtec_ad2_submission": "adkd.deploy.submission",
    "adkd.methods.maps": "adkd.methods.components.maps",
    "adkd.methods.postprocess": "adkd.methods.components.postprocess",
}
# python -m <old> -> adkd <command>
COMMANDS = {
    "adkd.predict": "predict",
    "adkd.export": "export",
    "adkd.serve": "serve",
    "adkd.report.__main__": "report",
    "adkd.wandb_sweep": "sweep",
    "adkd.preview_synthesis": "preview",
    "adkd.mvtec_ad2_submission": "submit",
}


def forward(old: str, command: str) -> None:
    """``python -m <old> args``: ``adkd <command> args``, after a line saying so."""
    print(f"note: python -m {old.removesuffix('.__main__')} is now `adkd {command}`", file=sys.stderr)
    sys.exit(main([command, *sys.argv[1:]]))


class _Loader(importlib.abc.Loader):
    def __init__(self, name: str) -> None:
        self.name = name

    def create_module(self, spec):  # noqa: ANN001, ANN201
        new = MODULES.get(self.name)
        if new is None:
            return None
        warnings.warn(f"{self.name} is now {new}", FutureWarning, stacklevel=4)
        module = importlib.import_module(new)
        self.real_spec = module.__spec__
        return module

    def exec_module(self, module) -> None:  # noqa: ANN001
        if self.name in MODULES:
            module.__spec__ = self.real_spec  # the import machinery set the alias's

    def get_code(self, name: str):  # noqa: ANN201 - what `python -m <name>` runs
        if name in COMMANDS:
            return compile(f"from adkd.moved import forward\nforward({name!r}, {COMMANDS[name]!r})", name, "exec")
        return compile(
            f"raise SystemExit({f'{name} is now {MODULES[name]}, and is not a command: see adkd --help'!r})",
            name,
            "exec",
        )


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path=None, target=None):  # noqa: ANN001, ANN201
        if name in MODULES or name in COMMANDS:
            return importlib.util.spec_from_loader(name, _Loader(name))
        return None


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())  # last: only names nothing else finds
