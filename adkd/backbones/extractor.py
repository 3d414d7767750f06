"""Multi-scale feature extractor over a backbone's stages."""

from __future__ import annotations

import torch
from torch import nn

from adkd.backbones.registry import get_spec
from adkd.backbones.weights import load_pretrained


def build_stages(name: str, pretrained: bool = True, weights: str | None = None) -> nn.ModuleList:
    """The five stages (stem, strides 4, 8, 16, 32) of backbone ``name``, with weights if asked."""
    spec = get_spec(name)
    model = spec.build()
    if pretrained or weights:
        load_pretrained(model, name, spec, weights)
    return nn.ModuleList(spec.stages(model))


class FeatureExtractor(nn.Module):
    """Returns the outputs of the stages in ``layers`` (1 = stride 4, 2 = stride 8, 3 = 16, 4 = 32).

    Images come in as RGB in [0, 1]; the extractor applies its backbone's input normalisation
    itself, so datasets, exported models and figures never have to know or undo it.
    Stages past the deepest requested one are dropped, so e.g. RD4AD's teacher never runs layer4.
    With ``frozen`` the parameters take no gradient and the module stays in eval mode (BatchNorm
    statistics untouched) even when its parent is set to train.
    """

    def __init__(
        self,
        name: str,
        layers: list[int] | tuple[int, ...] = (1, 2, 3),
        pretrained: bool = True,
        weights: str | None = None,
        frozen: bool = True,
    ) -> None:
        super().__init__()
        layers = sorted(int(i) for i in layers)
        if not layers or layers[0] < 0 or layers[-1] > 4:
            raise ValueError(f"layers must be stage indices in 0..4, got {layers}")
        self.name = name
        self.layers = layers
        self.frozen = frozen
        self.stages = build_stages(name, pretrained, weights)[: layers[-1] + 1]
        spec = get_spec(name)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        if frozen:
            self.requires_grad_(False)
        self.feature_cache = None  # set during a training step by adkd.methods.components.teacher_cache
        self.channels, self.strides = self._probe()
        self.train()  # frozen: eval mode for good (see train); trainable: train mode, as any new module

    @torch.no_grad()
    def _probe(self, size: int = 64) -> tuple[list[int], list[int]]:
        was_training = self.training
        self.eval()
        feats = self(torch.zeros(1, 3, size, size))
        self.train(was_training)
        return [f.shape[1] for f in feats], [size // f.shape[-1] for f in feats]

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(mode and not self.frozen)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB -> the backbone's input scale."""
        return (images - self.mean) / self.std

    def run_stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Stage ``index`` on ``x``; a subclass may run it otherwise (ADPS's student: on patches)."""
        return self.stages[index](x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.feature_cache is not None:  # a frozen teacher's features kept from earlier epochs
            return self.feature_cache.features(self, x)
        return self.compute(x)

    def compute(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The features, computed (``forward`` may serve them from a training run's cache)."""
        x = self.normalize(x)
        feats = []
        for i in range(len(self.stages)):
            x = self.run_stage(i, x)
            if i in self.layers:
                feats.append(x)
        return feats
