"""Weight initialisation shared by methods."""

from __future__ import annotations

from torch import nn


def kaiming_init(module: nn.Module) -> None:
    """The official initialisation: Kaiming-normal (fan-out) convolutions, unit BatchNorm."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
