"""What a new method costs: a network, a thin module and a yaml, written here for a toy method
(the distance to the mean training image) outside the package. Registered by its yaml alone, it
trains, is tested and meets the same floor as every method, with no edit to any shared file."""

from __future__ import annotations

import shutil
import sys
import textwrap

import pytest

from tests.conftest import tiny_overrides
from tests.test_run import FLOOR, finds_the_square  # imported before the toy method is registered

NETWORK = '''
import torch
from torch import nn


class MeanImageNetwork(nn.Module):
    """The anomaly map is each pixel's distance to a learned image of the normal ones."""

    def __init__(self, image_size: int = 32) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.full((1, 3, image_size, image_size), 0.5))

    def forward(self, images):
        return images, self.mean

    def anomaly_map(self, images):
        return (images - self.mean).abs().mean(1, keepdim=True)
'''

MODULE = """
from adkd.methods.base import AnomalyModule


class MeanImage(AnomalyModule):
    def loss(self, batch):
        images, mean = self.network(batch["image"])
        return (images - mean).pow(2).mean()
"""

YAML = """
# @package _global_
post: {map_sigma: 1.0, score: max}
recipe:
  paper: {max_epochs: 10, batch_size: 4, lr: 0.1}
  small: {steps: 30, batch_size: 4, lr: 0.1}
search_space:
  lr: tag(log, interval(0.01, 1.0))
method:
  _target_: toy_method.module.MeanImage
  network:
    _target_: toy_method.network.MeanImageNetwork
    image_size: ${image_size}
  optimizer:
    _target_: torch.optim.Adam
    _partial_: true
    lr: ${lr}
  scheduler: null
"""


@pytest.fixture
def toy_method(tmp_path, monkeypatch):
    """The three files, in a package and a config folder of their own (a copy of adkd's conf/)."""
    import adkd.training.config

    package = tmp_path / "src" / "toy_method"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "network.py").write_text(textwrap.dedent(NETWORK))
    (package / "module.py").write_text(textwrap.dedent(MODULE))
    conf = tmp_path / "conf"
    shutil.copytree(adkd.training.config.CONF_DIR, conf)
    (conf / "method" / "toy.yaml").write_text(textwrap.dedent(YAML))
    monkeypatch.setattr(adkd.training.config, "CONF_DIR", str(conf))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    yield "toy"
    sys.modules.pop("toy_method.network", None)
    sys.modules.pop("toy_method.module", None)


def test_a_method_is_a_network_a_module_and_a_yaml(toy_method, tiny_mvtec, tmp_path):
    from adkd.methods.registry import method_names

    assert toy_method in method_names()
    from adkd.training.config import compose
    from adkd.training.run import run

    results = run(
        compose(
            tiny_overrides(
                tiny_mvtec, f"method={toy_method}", "budget=demo", "max_epochs=10", "post.score=topk", "post.topk=0.05"
            ),
            tmp_path / "run",
        )
    )
    assert results["method"] == toy_method
    assert finds_the_square(results), (results["metrics"], FLOOR)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
