"""Shared fixtures: one thread, tiny images, real configs composed with Hydra."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    base = np.tile(np.linspace(60, 180, size, dtype=np.float32), (size, 1))
    return np.clip(base + rng.normal(0, 8, (size, size)), 0, 255)


@pytest.fixture(scope="session")
def tiny_mvtec(tmp_path_factory) -> Path:
    """An MVTec-layout category ``widget``: 12 normal training images, 4 normal and 4 anomalous
    test images (bright squares) with masks, all 32x32."""
    root = tmp_path_factory.mktemp("tiny_mvtec")
    cat = root / "widget"
    rng = np.random.default_rng(0)
    size = 32

    def save(arr: np.ndarray, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr.astype(np.uint8)).save(path)

    for i in range(12):
        save(_texture(rng, size), cat / "train" / "good" / f"{i:03d}.png")
    for i in range(4):
        save(_texture(rng, size), cat / "test" / "good" / f"{i:03d}.png")
        img, mask = _texture(rng, size), np.zeros((size, size))
        y, x = rng.integers(2, size - 12, 2)
        img[y : y + 8, x : x + 8] = 255
        mask[y : y + 8, x : x + 8] = 255
        save(img, cat / "test" / "spot" / f"{i:03d}.png")
        save(mask, cat / "ground_truth" / "spot" / f"{i:03d}_mask.png")
    return root


def smallest_image(method: str) -> int:
    """The fixture's 32 px, or the smallest image size the method's network works at
    (``min_image_size``: DRAEM's 64); the fixture is resized up to it."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf" / "method" / f"{method}.yaml"
    network = OmegaConf.load(conf).method.network._target_
    return max(32, getattr(get_class(network), "min_image_size", 32))


SLOW_IMAGE_SIZE = 256  # a method that needs images this large runs its end-to-end cases under -m slow


def method_params() -> list:
    """Every registered method, for ``parametrize``; those whose smallest image is SLOW_IMAGE_SIZE
    or more (EfficientAD's 256) marked slow: on two cores one training step of EfficientAD at 256 px
    takes about 4 s, a floor run minutes. Their cheap checks are in their own test files."""
    from adkd.methods.registry import method_names

    slow = pytest.mark.slow
    return [pytest.param(m, marks=slow) if smallest_image(m) >= SLOW_IMAGE_SIZE else m for m in method_names()]


def fixture_steps(method: str) -> int:
    """Optimiser steps on the fixture (3 batches an epoch) that show a method works: a fraction of its
    demo recipe's, whose own floor, on 50 training textures, is a slow test (tests/test_run.py).
    DeSTSeg's segmentation network starts after its student, and DRAEM's discriminative one learns
    slowly: both get more; so does UniNet, whose student learns two teachers' features at once."""
    return {"destseg": 120, "draem": 90, "uninet": 60}.get(method, 30)


def fixture_seed(method: str) -> int:
    """The seed of a method's floor runs on the fixture: 0, but DRAEM's 2. DRAEM's floor on the 64 px
    squares holds on some seeds only, and which ones moves with the CPU's float rounding
    (adkd/methods/draem/README.md)."""
    return 2 if method == "draem" else 0


def tiny_overrides(root: Path, *extra: str) -> list[str]:
    return [
        "dataset=folder",
        f"dataset.root={root}",
        "category=widget",
        "image_size=32",
        "batch_size=4",
        "max_epochs=1",
        "backbone.pretrained=false",
        "logger=none",
        "num_figures=2",
        *extra,
    ]


@pytest.fixture(scope="session")
def trained_run(tiny_mvtec, tmp_path_factory) -> Path:
    """An RD4AD run on ``tiny_mvtec`` (one epoch), finished: thresholds, test predictions. Tests that
    change it (a chosen threshold) work on a copy."""
    from adkd.training.config import compose
    from adkd.training.run import run

    folder = tmp_path_factory.mktemp("run")
    run(compose(tiny_overrides(tiny_mvtec, "method=rd4ad"), folder))
    return folder


@pytest.fixture(scope="session")
def exported_run(trained_run, tmp_path_factory) -> Path:
    """A copy of ``trained_run`` with its ONNX export (``export/model.onnx``). The export is the slow
    part of every export test (about 30 s: torch's dynamo exporter), so it is made once for the whole
    session, whichever pytest-xdist worker asks first (the others wait for it, then read it); the
    trained runs it copies are the same on every worker (fixed seed, one thread). Tests that change
    it work on a copy."""
    import shutil

    from filelock import FileLock

    from adkd.deploy.export import export

    shared = tmp_path_factory.getbasetemp()  # this session's folder; under xdist each worker's, below the session's
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    folder = shared / "exported_run" / "run"
    with FileLock(str(shared / "exported_run.lock")):
        if not (folder.parent / "done").is_file():
            shutil.rmtree(folder.parent, ignore_errors=True)
            shutil.copytree(trained_run, folder)
            export(folder, "onnx")
            (folder.parent / "done").touch()
    return folder
