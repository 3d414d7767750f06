"""The methods adkd knows: one yaml each in conf/method/. Adding ``conf/method/<name>.yaml`` (with
its network and module) registers a method: tests, ``make bench``, the experiment scripts and the
searches enumerate :func:`method_names` (as timm's ``list_models``), and build through the same
composed config as ``python -m adkd.run method=<name>``."""

from __future__ import annotations

from pathlib import Path

from adkd.errors import ConfigError
from adkd.training import config


def method_names() -> list[str]:
    """Every registered method, sorted."""
    return sorted(p.stem for p in (Path(config.CONF_DIR) / "method").glob("*.yaml"))


def build_method(name: str, *overrides: str, output_dir: str | Path = "outputs/unused"):  # noqa: ANN201
    """The LightningModule of method ``name`` as ``python -m adkd.run method=<name> <overrides>``
    would build it."""
    from hydra.utils import instantiate

    if name not in method_names():
        raise ConfigError(f"Unknown method {name!r}. Registered: {', '.join(method_names())}.")
    cfg = config.compose([f"method={name}", *overrides], output_dir)
    return instantiate(cfg.method, _convert_="all")


if __name__ == "__main__":  # the command of earlier versions
    from adkd.moved import forward

    forward("adkd.methods.registry", "methods")
