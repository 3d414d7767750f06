"""Checkpoints: a run folder's or a .ckpt file's trained model rebuilt for inference, with its run
config, read under the trust rules (:mod:`adkd.deploy.trust`) and the operating point an engineer
chose (:mod:`adkd.deploy.operating_point`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from adkd.data.base import ALL_CATEGORIES
from adkd.deploy import operating_point, trust
from adkd.errors import CheckpointError
from adkd.methods.base import CATEGORY_THRESHOLDS


def checkpoint_path(source: Path) -> Path:
    path = source / "checkpoints" / "last.ckpt" if source.is_dir() else source
    if not path.is_file():
        raise CheckpointError(
            f"No checkpoint at {path}: give a run folder (holding checkpoints/last.ckpt) or a .ckpt file."
        )
    return path


def load_model(source: Path, device: str = "cpu", category: str | None = None) -> tuple[nn.Module, dict]:
    """The trained LightningModule of a run folder or checkpoint, in inference mode, and its run
    config (with ``checkpoint``: the file, its epoch and step). The stored config is
    checked by :mod:`adkd.deploy.trust` before anything is built from it. Image and pixel thresholds
    chosen after training (:mod:`adkd.deploy.operating_point`) replace the calibrated ones.

    A unified model (``category=all``) holds thresholds per category and none of its own:
    ``category`` picks the one it decides with, and is required (a CheckpointError lists them).
    The config returned is then that category's view of the run (``category``, the dataset's
    ``category``: the images export and serve check and show are that category's), and
    ``checkpoint.category`` names it. A model of one category takes no ``category``."""
    from hydra.utils import instantiate

    path = checkpoint_path(source)
    checkpoint = read_checkpoint(path)
    config = checkpoint.get("adkd_config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} carries no adkd run config: was it written by adkd.run (this version)?")
    method = trust.method_config(config, path)
    try:
        model = instantiate(method, _convert_="all")
        model.load_state_dict(checkpoint["state_dict"])
    except Exception as err:  # noqa: BLE001 - a config or weights this version of adkd cannot rebuild
        cause = err.__cause__ or err
        said = " ".join(line.strip() for line in str(cause).splitlines() if line.strip())  # whole, on one line
        raise CheckpointError(
            f"Cannot rebuild the model of {path} from the config inside it ({type(cause).__name__}: {said}). "
            "Was it written by another version of adkd?"
        ) from err

    model.post.category_thresholds = trust.category_thresholds(checkpoint.get(CATEGORY_THRESHOLDS), path)
    config, picked = _for_category(model, config, category, path)
    origin = {
        "path": str(path),
        "epoch": int(checkpoint.get("epoch", -1)),
        "global_step": int(checkpoint.get("global_step", -1)),
    }
    if picked:
        origin["category"] = picked

    choice = operating_point.choice(path, category=picked)
    if choice is not None:  # the engineer's choice (adkd.deploy.serve) over the calibrated one
        origin["calibrated_image_threshold"] = float(model.post.image_threshold)
        origin["chosen_threshold"] = str(operating_point.sidecar_path(path, picked))
        if choice.pixel is not None:
            origin["calibrated_pixel_threshold"] = float(model.post.pixel_threshold)
        model.post.set_thresholds(image=choice.image, pixel=choice.pixel)
    return model.to(device).prepare_for_inference(), {**config, "checkpoint": origin}


def model_categories(source: Path) -> list[str]:
    """The categories a unified model (trained with ``category=all``) holds thresholds for, in its
    order; empty for a model of one category."""
    path = checkpoint_path(source)
    return list(trust.category_thresholds(read_checkpoint(path).get(CATEGORY_THRESHOLDS), path))


def _for_category(model: nn.Module, config: dict, category: str | None, path: Path) -> tuple[dict, str | None]:
    """The run config as ``category``'s view of a unified run, with that category's thresholds in
    the model, and the category picked (None for a model of one category)."""
    kept, trained = model.post.category_thresholds, config.get("category")
    if trained != ALL_CATEGORIES:
        if category is not None:
            raise CheckpointError(
                f"{path} is a model of category {trained!r} alone; --category picks a category of "
                "a unified model (trained with category=all): leave it out."
            )
        return config, None
    if category is None:
        which = f"the categories {', '.join(kept)}" if kept else "every category of its dataset"
        raise CheckpointError(
            f"{path} is one model for {which} (trained with category=all), with thresholds for each "
            "category: give the category of the images with --category."
        )
    if kept and category not in kept:
        raise CheckpointError(f"{path} has no category {category!r}: it holds thresholds for {', '.join(kept)}.")
    if kept:
        model.post.use(category)
    dataset = config.get("dataset")
    view = {**config, "category": category}
    return ({**view, "dataset": {**dataset, "category": category}} if isinstance(dataset, dict) else view), category


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's contents, tensors and plain data only (``weights_only``: no pickled code)."""
    import pickle
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any("/code/" in name for name in archive.namelist()):
                raise CheckpointError(
                    f"{path} is a TorchScript export, not a checkpoint: run it with torch.jit.load(path) on a "
                    "batch of RGB images in [0, 1] at its image size (it returns the map, the score and both "
                    "normalised), or give adkd.deploy.predict the run folder, its .ckpt, or an .onnx export."
                )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused something: code, or a foreign object
        raise CheckpointError(
            f"Refused {path}: it holds objects other than tensors and plain data, which adkd never unpickles "
            f"({str(err).splitlines()[-1][:160] if str(err) else 'UnpicklingError'}). Nothing in it was run."
        ) from err
    except Exception as err:  # noqa: BLE001 - empty, truncated, foreign files
        raise CheckpointError(f"Cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict).")
    return checkpoint
