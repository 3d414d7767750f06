"""Where EfficientAD's teacher PDN weights come from (``method.teacher_weights``).

- ``download``: the pretrained teachers anomalib publishes (the official ones, distilled from
  WideResNet-101 on ImageNet, renamed to anomalib's layer names), fetched once into
  ``~/.cache/adkd/efficientad`` and checked against their sha256. Opt-in: a run never downloads
  unless asked. Offline (``ADKD_OFFLINE=1``, or no network) it fails at once, naming the ways out.
- a path: a teacher file, either such a download, the official code's state dict, or one written by
  ``adkd distill`` (distilled from any adkd backbone, offline).
- null: the teacher keeps its random initialisation (with a warning): the method then runs, but its
  numbers are not EfficientAD's.

The teacher's weights are read when training starts, never when a checkpoint is rebuilt: a trained
model's teacher is in its checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import socket
import zipfile
from pathlib import Path
from urllib.request import urlretrieve

import torch
from torch import nn

from adkd.errors import BackboneWeightsError, ConfigError

log = logging.getLogger(__name__)

WEIGHTS_URL = (
    "https://github.com/open-edge-platform/anomalib/releases/download/efficientad_pretrained_weights/"
    "efficientad_pretrained_weights.zip"
)
WEIGHTS_SHA256 = "c09aeaa2b33f244b3261a5efdaeae8f8284a949470a4c5a526c61275fe62684a"
CACHE = Path("~/.cache/adkd/efficientad")
DOWNLOAD_TIMEOUT_S = 30
DISTILL_COMMAND = "adkd distill --backbone mobilenet_v2 --out teacher_{size}.pth --size {size}"


def ways_out(size: str) -> str:
    return (
        "Ways out:\n"
        f"  - distil a teacher offline from an adkd backbone: {DISTILL_COMMAND.format(size=size)}, then "
        f"method.teacher_weights=teacher_{size}.pth\n"
        f"  - download {WEIGHTS_URL} where there is a network, unzip it, and give its "
        f"pretrained_teacher_{_long(size)}.pth as method.teacher_weights\n"
        "  - run with a random teacher: method.teacher_weights=null (it runs; its numbers are not EfficientAD's)"
    )


def _long(size: str) -> str:
    return {"s": "small", "m": "medium"}[size]


def downloaded_teacher(size: str, cache: Path | None = None) -> Path:
    """The published teacher file of PDN ``size`` (s or m), downloaded once into ``cache`` (``CACHE``)."""
    folder = (cache or CACHE).expanduser()
    path = folder / "efficientad_pretrained_weights" / f"pretrained_teacher_{_long(size)}.pth"
    if path.is_file():
        return path
    if os.environ.get("ADKD_OFFLINE") == "1":
        raise BackboneWeightsError(f"Offline (ADKD_OFFLINE=1) and no downloaded teacher at {path}.\n" + ways_out(size))
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "efficientad_pretrained_weights.zip"
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        log.info("EfficientAD: downloading the pretrained teachers from %s into %s", WEIGHTS_URL, folder)
        urlretrieve(WEIGHTS_URL, archive)  # noqa: S310 - a fixed https URL
    except Exception as err:  # noqa: BLE001 - any network/IO failure becomes one actionable error
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise BackboneWeightsError(f"Could not download EfficientAD's teacher: {first}\n" + ways_out(size)) from err
    finally:
        socket.setdefaulttimeout(previous)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        archive.unlink()
        raise BackboneWeightsError(
            f"The downloaded {archive.name} is not the published one (sha256 {digest[:12]}..., "
            f"expected {WEIGHTS_SHA256[:12]}...): removed.\n" + ways_out(size)
        )
    with zipfile.ZipFile(archive) as zipped:
        names = [n for n in zipped.namelist() if n.endswith(".pth") and ".." not in n and not n.startswith("/")]
        zipped.extractall(folder, members=names)
    archive.unlink()
    if not path.is_file():
        raise BackboneWeightsError(f"The downloaded archive holds no {path.name} (in {folder}).\n" + ways_out(size))
    return path


def read_teacher_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a teacher file, in their stored order (plain tensors only: nothing is unpickled)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"EfficientAD teacher file not found: {path} (method.teacher_weights).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise BackboneWeightsError(
            f"Cannot read EfficientAD teacher {path}: not a torch file of plain tensors "
            f"({type(err).__name__}). The official code's whole-module files are refused: give its state dict."
        ) from err
    for key in ("state_dict", "teacher", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneWeightsError(f"EfficientAD teacher {path} holds no state dict of tensors.")
    return state


def load_teacher(teacher: nn.Module, state: dict[str, torch.Tensor], source: str, size: str) -> None:
    """Load ``state`` into ``teacher`` by order, shapes checked: the files name the same convolutions
    three ways (anomalib's ``conv1..``, the official ``nn.Sequential``'s ``0, 3, ..``, adkd's
    ``layers.0, ..``), always in the network's order."""
    ours = teacher.state_dict()
    theirs = list(state.values())
    shapes_ours = [tuple(v.shape) for v in ours.values()]
    shapes_theirs = [tuple(v.shape) for v in theirs]
    if shapes_ours != shapes_theirs:
        raise BackboneWeightsError(
            f"Teacher weights {source} do not fit EfficientAD's PDN of size {size!r} with "
            f"{shapes_ours[-1][0]} output channels: the file holds {len(theirs)} tensors shaped "
            f"{shapes_theirs[:2]}..., the network {len(ours)} shaped {shapes_ours[:2]}... "
            "Give a teacher of this size (method.size=s|m), or distil one.\n" + ways_out(size)
        )
    teacher.load_state_dict(dict(zip(ours, (v.float() for v in theirs), strict=True)))


def resolve_teacher(setting: str | None, size: str) -> dict[str, torch.Tensor] | None:
    """The teacher's state for ``method.teacher_weights``: None (random teacher), ``download`` or a path."""
    if setting is None or str(setting).lower() in ("", "null", "none", "random"):
        return None
    path = downloaded_teacher(size) if str(setting) == "download" else Path(setting)
    return read_teacher_file(path)
