"""The frozen-teacher feature cache (adkd.methods.components.teacher_cache): served features are the
ones computed, anything that changes them is a miss, and a seeded training is the same with it off."""

from __future__ import annotations

import logging

import pytest
import torch

from adkd.methods.registry import build_method
from tests.conftest import tiny_overrides

SMALL = ("backbone=resnet18", "backbone.pretrained=false", "image_size=32")


def rd4ad(*overrides: str):  # noqa: ANN201
    torch.manual_seed(0)
    return build_method("rd4ad", *SMALL, *overrides).train()


def batch(images: torch.Tensor, **extra) -> dict:  # noqa: ANN003
    return {"image": images, "image_path": [f"img{i}.png" for i in range(len(images))], **extra}


def teacher_features(model, b: dict) -> list[torch.Tensor]:  # noqa: ANN001
    with model.teacher_cache.serving(model.network, b), torch.no_grad():
        return model.network.teacher(b["image"])


def test_served_features_are_the_computed_ones_bit_for_bit():
    model = rd4ad()
    images = torch.rand(4, 3, 32, 32)
    first = teacher_features(model, batch(images))
    cache = model.teacher_cache
    assert (cache.hits, cache.misses, len(cache.entries)) == (0, 4, 4)
    assert cache.bytes == 4 * (64 * 8 * 8 + 128 * 4 * 4 + 256 * 2 * 2) * 4  # ResNet-18 layers 1-3 at 32 px
    served = teacher_features(model, batch(images))
    assert (cache.hits, cache.misses) == (4, 4)
    assert all(torch.equal(a, b) for a, b in zip(first, served, strict=True))
    with torch.no_grad():
        recomputed = model.network.teacher(images)
    assert all(torch.equal(a, b) for a, b in zip(recomputed, served, strict=True))
    # a batch mixing kept and new images: the new ones computed, in their places
    mixed = torch.cat([images[:2], torch.rand(2, 3, 32, 32)])
    paths = ["img0.png", "img1.png", "new0.png", "new1.png"]
    out = teacher_features(model, {"image": mixed, "image_path": paths})
    assert (cache.hits, cache.misses) == (6, 6)
    with torch.no_grad():
        expected = model.network.teacher(mixed)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(out, expected, strict=True))


def test_an_image_has_one_checksum_in_batches_of_any_size():
    # a reduction over the whole batch (a matrix product) rounded the same image otherwise in a batch of
    # 3 than in one of 4: every later epoch missed where the last batch's images moved into full ones
    cache = rd4ad().teacher_cache
    images = torch.rand(8, 3, 64, 64)
    assert cache.checksums(images)[5] == cache.checksums(images[3:6])[2] == cache.checksums(images[5:6])[0]


def test_an_augmented_or_resized_image_is_computed_again_and_synthetic_ones_are_never_kept():
    model = rd4ad()
    images = torch.rand(2, 3, 32, 32)
    teacher_features(model, batch(images))
    cache = model.teacher_cache
    noisy = images + 0.01 * torch.randn_like(images)  # the same paths, other pixels (noise, an augmentation)
    out = teacher_features(model, batch(noisy))
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(out, model.network.teacher(noisy), strict=True))
    assert cache.hits == 0
    bigger = torch.rand(2, 3, 64, 64)  # another image size under the same paths
    assert teacher_features(model, batch(bigger))[0].shape[-1] == 16
    assert cache.hits == 0
    # a synthetic anomaly in the first image, none in the second; no clean copy: only the second is kept
    cache.clear()
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 4:9, 4:9] = 1
    teacher_features(model, batch(images, synthetic=torch.tensor([True, True]), gt_mask=mask))
    assert list(p for _, p in cache.entries) == ["img1.png"]
    # with the clean images beside them (DeSTSeg's loaders), the anomalous ones are never stored under the clean key
    cache.clear()
    anomalous = images.clone()
    anomalous[0, :, 4:9, 4:9] = 1.0
    teacher_features(model, batch(anomalous, synthetic=torch.tensor([True, True]), gt_mask=mask, clean=images))
    assert list(p for _, p in cache.entries) == ["img1.png"]
    out = teacher_features(model, batch(images, synthetic=torch.tensor([True, True]), gt_mask=mask, clean=images))
    assert cache.hits == 1  # the clean first image computed (and now kept), the second served


def test_new_weights_empty_the_cache():
    model = rd4ad()
    images = torch.rand(2, 3, 32, 32)
    teacher_features(model, batch(images))
    other = build_method("rd4ad", *SMALL).network.teacher.state_dict()
    model.network.teacher.load_state_dict(other)  # in place: the tensors' versions move
    out = teacher_features(model, batch(images))
    assert model.teacher_cache.hits == 0
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(out, model.network.teacher(images), strict=True))


def test_switched_off_or_over_its_limit_it_keeps_nothing(caplog):
    model = rd4ad("teacher_cache.enabled=false")
    teacher_features(model, batch(torch.rand(2, 3, 32, 32)))
    assert model.teacher_cache.entries == {} and model.teacher_cache.misses == 0
    assert model.network.teacher.feature_cache is None
    model = rd4ad("teacher_cache.max_gb=0.0001")  # 107 kB: 1000 images of 28.7 kB each do not fit
    model.teacher_cache.expected = 1000
    with caplog.at_level(logging.WARNING):
        teacher_features(model, batch(torch.rand(2, 3, 32, 32)))
    assert model.teacher_cache.entries == {} and model.teacher_cache.full
    assert "0.03 GB, over teacher_cache.max_gb=0.00" in caplog.text
    model = rd4ad("teacher_cache.dtype=float16")
    images = torch.rand(2, 3, 32, 32)
    first = teacher_features(model, batch(images))
    served = teacher_features(model, batch(images))
    assert model.teacher_cache.bytes == 2 * 28_672 // 2
    assert all(
        s.dtype == torch.float32 and torch.allclose(f, s, rtol=1e-3, atol=1e-3)
        for f, s in zip(first, served, strict=True)
    )


def test_trainable_extractors_are_never_cached():
    torch.manual_seed(0)
    model = build_method("stfpm", *SMALL).train()
    images = torch.rand(2, 3, 32, 32)
    for _ in range(2):
        with model.teacher_cache.serving(model.network, batch(images)):
            model.network(images)
    assert model.network.student.feature_cache is None
    assert (model.teacher_cache.hits, model.teacher_cache.misses) == (2, 2)  # the teacher's alone


@pytest.mark.parametrize("method", ["rd4ad", "destseg"])
def test_a_seeded_training_is_the_same_with_the_cache_on_and_off(tiny_mvtec, tmp_path, method):
    import lightning as L
    from hydra.utils import instantiate

    from adkd.training.config import compose

    results = {}
    for enabled in (True, False):
        extra = ["method.student_fraction=0.7", "lr=0.01"] if method == "destseg" else []  # two student epochs of three
        overrides = tiny_overrides(
            tiny_mvtec, f"method={method}", "max_epochs=3", f"teacher_cache.enabled={enabled}", *extra
        )
        cfg = compose(overrides, tmp_path / str(enabled))
        L.seed_everything(0, verbose=False)
        model = instantiate(cfg.method, _convert_="all")
        trainer = L.Trainer(
            max_epochs=3,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(model, datamodule=instantiate(cfg.dataset))
        hits = model.teacher_cache.hits
        results[enabled] = (float(trainer.callback_metrics["train/loss"]), model.network.state_dict(), hits)
    on, off = results[True], results[False]
    assert on[2] > 0 and off[2] == 0  # the cache served later epochs' teacher features
    assert on[0] == pytest.approx(off[0], rel=1e-5)
    for name, value in on[1].items():
        if value.is_floating_point():
            assert torch.allclose(value, off[1][name], rtol=1e-4, atol=1e-5), name


def test_bad_settings_stop_the_run_before_anything_is_built(tiny_mvtec, tmp_path):
    from adkd.errors import ConfigError
    from adkd.training.config import compose, validate

    for bad, says in (("teacher_cache.max_gb=-1", "0 or more"), ("teacher_cache.dtype=int8", "float16")):
        with pytest.raises(ConfigError, match=says):
            validate(compose(tiny_overrides(tiny_mvtec, bad), tmp_path))
    validate(compose(tiny_overrides(tiny_mvtec, "teacher_cache.dtype=float16"), tmp_path))
