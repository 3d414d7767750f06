"""What adkd rebuilds from a file it did not write in this process: a checkpoint's stored run
config, an export's metadata.

A checkpoint loads with ``torch.load(weights_only=True)``, which refuses pickled code, but its run
config is plain strings and dicts that are handed to Hydra's ``instantiate``: any ``_target_`` in
it would be called (``builtins.open``, ``torch.load`` of a pickle, ...), and an OmegaConf
interpolation (``${oc.decode:...}``) would build new ones after any check. So a config read from a
file is rebuilt only after this module has checked it:

- the method is an :class:`~adkd.methods.base.AnomalyModule` subclass defined under
  ``adkd.methods``, its network an ``nn.Module`` defined there too, the dataset an
  :class:`~adkd.data.base.AnomalyDataModule` under ``adkd.data`` (the target strings are checked
  before anything is imported);
- no other ``_target_`` (or other Hydra key) anywhere below them, but for the optimiser and
  scheduler, the only other nested ones adkd writes: they must name ``torch.optim`` (or adkd's own
  scheduler) and are then dropped, since inference needs neither;
- no value holds an interpolation (a resolved run config never does);
- the network is built without pretrained weights and reads no weights file (``pretrained`` and
  ``weights`` are set aside whatever they say, or where they are left out): the weights are the
  checkpoint's.

Anything else is refused with one message naming the key; nothing in the file is run.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from pathlib import Path

from adkd.errors import CheckpointError
from adkd.methods.components.postprocess import THRESHOLDS
from adkd.training.config import upgrade_stored_method

# Partial factories that only training calls: checked as text, then dropped (inference needs neither).
TRAINING_ONLY = {
    "optimizer": re.compile(r"^torch\.optim\.[A-Za-z_][A-Za-z0-9_]*$"),
    "scheduler": re.compile(r"^(torch\.optim\.lr_scheduler|adkd\.methods\.base)\.[A-Za-z_][A-Za-z0-9_]*$"),
}
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def method_config(config: dict, source: Path) -> dict:
    """The stored method config, checked and made inference-only (no optimiser, no downloads)."""
    method = upgrade_stored_method(_section(config, "method", source))  # an earlier version's layout
    for key, allowed in TRAINING_ONLY.items():
        factory = method.pop(key, None)
        if factory is None:
            continue
        target = factory.get("_target_") if isinstance(factory, dict) else None
        if not isinstance(target, str) or not allowed.match(target):
            raise _refused(source, f"method.{key}._target_", target if target is not None else factory)
        _check_tree({k: v for k, v in factory.items() if k not in ("_target_", "_partial_")}, f"method.{key}", source)
    network = method.pop("network", None)
    if not isinstance(network, dict):
        raise CheckpointError(f"{source}: the stored method config has no network: not a model adkd can rebuild.")
    _check_tree(network, "method.network", source)
    network_class = _check_target(network.get("_target_"), "adkd.methods.", "torch.nn:Module", "method.network", source)
    _check_tree(method, "method", source)
    _check_target(method.get("_target_"), "adkd.methods.", "adkd.methods.base:AnomalyModule", "method", source)
    # The weights are the checkpoint's: never a file or a download, whatever the config says or
    # leaves out (a network left to its default, pretrained=True, would fetch ImageNet weights).
    accepts = inspect.signature(network_class).parameters
    for key, value in (("pretrained", False), ("weights", None)):
        if key in accepts or key in network:
            network = {**network, key: value}
    method["network"] = network
    if isinstance(method.get("synthesis"), dict):  # training-only; its source folder need not exist here
        method["synthesis"] = {**method["synthesis"], "source": None}
    return method


def dataset_config(config: dict, source: Path) -> dict:
    """The stored dataset config, checked; never downloads."""
    dataset = _section(config, "dataset", source)
    _check_tree(dataset, "dataset", source)
    _check_target(dataset.get("_target_"), "adkd.data.", "adkd.data.base:AnomalyDataModule", "dataset", source)
    dataset["synthesis"] = None  # training-only
    return {**dataset, "download": False} if "download" in dataset else dataset


def image_size(value: object, source: object) -> int:
    """An image size read from a file: a whole number of pixels adkd can allocate."""
    try:
        size = int(str(value))
    except ValueError:
        size = -1
    if not 1 <= size <= 8192:
        raise CheckpointError(f"{source} gives image_size {value!r}: expected a whole number from 1 to 8192.")
    return size


FLOAT32_MAX = 3.4028234663852886e38  # thresholds live in float32 buffers: a larger value cannot be held


def threshold(value: object, key: str, source: object) -> float | None:
    """A threshold read from a file: a finite number a float32 holds, or None where the model has
    none (NaN)."""
    try:
        number = float(str(value))
    except ValueError:
        raise CheckpointError(f"{source} gives {key} {value!r}: expected a number.") from None
    if math.isnan(number):
        return None
    if not abs(number) <= FLOAT32_MAX:
        raise CheckpointError(
            f"{source} gives {key} {value!r}: expected a finite number within float32's range "
            f"(at most {FLOAT32_MAX:.4g} in size)."
        )
    return number


def category_thresholds(value: object, source: object) -> dict[str, dict[str, float]]:
    """A unified model's per-category thresholds read from its checkpoint: category names, each
    with the post-processor's four values (numbers, NaN where it has none)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CheckpointError(f"{source} holds per-category thresholds that are not a table of categories.")
    kept = {}
    for category, values in value.items():
        well_formed = isinstance(category, str) and category and isinstance(values, dict)
        if not well_formed or set(values) != set(THRESHOLDS):
            raise CheckpointError(f"{source}: the thresholds of category {category!r} are not {', '.join(THRESHOLDS)}.")
        kept[category] = {}
        for key in THRESHOLDS:
            number = threshold(values[key], f"{key} of {category}", source)
            kept[category][key] = math.nan if number is None else number
    return kept


def _section(config: dict, key: str, source: Path) -> dict:
    section = config.get(key) if isinstance(config, dict) else None
    if not isinstance(section, dict):
        raise CheckpointError(f"{source}: the stored run config has no {key} section: not a model adkd can rebuild.")
    return dict(section)


def _check_tree(node: object, where: str, source: Path, top: bool = True) -> None:
    """No Hydra key but the section's own ``_target_``, and no interpolation, anywhere below."""
    if isinstance(node, dict):
        for key, value in node.items():
            name = f"{where}.{key}"
            if not isinstance(key, str):
                raise CheckpointError(f"Refused {source}: its stored config has a non-text key at {name}.")
            if key.startswith("_") and key.endswith("_") and not (top and key == "_target_"):
                raise _refused(source, name, value)
            _check_tree(value, name, source, top=False)
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            _check_tree(value, f"{where}[{i}]", source, top=False)
    elif isinstance(node, str) and "${" in node:
        raise CheckpointError(
            f"Refused {source}: its stored config holds an interpolation at {where} ({node[:80]!r}); "
            "adkd stores resolved configs only. Nothing in it was run."
        )


def _check_target(target: object, prefix: str, base: str, where: str, source: Path) -> type:
    """``target`` names a subclass of ``base`` defined under ``prefix`` (returned); checked as text
    before anything is imported, so a file cannot make adkd import a module of its choosing."""
    if not isinstance(target, str) or not _DOTTED.match(target) or not target.startswith(prefix):
        raise _refused(source, f"{where}._target_", target)
    module_name, _, name = target.rpartition(".")
    base_module, _, base_name = base.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        cls = None
    expected = getattr(importlib.import_module(base_module), base_name)
    if not (isinstance(cls, type) and issubclass(cls, expected)):
        raise _refused(source, f"{where}._target_", target)
    return cls


def _refused(source: Path, key: str, value: object) -> CheckpointError:
    shown = value.get("_target_", value) if isinstance(value, dict) else value
    return CheckpointError(
        f"Refused {source}: its stored config asks to build {str(shown)[:120]!r} at {key}. adkd rebuilds only "
        "its own methods and datasets (adkd.methods.*, adkd.data.*) from a file it is given. Nothing in it was run."
    )


def file_digest(path: Path) -> str:
    """sha256 of a file: which checkpoint an export came from."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
