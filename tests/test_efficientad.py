"""EfficientAD's networks and losses: parameter counts and shapes at 256 px (meta device), outputs
equal to anomalib's with the same weights, the map composition and statistics, the losses by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adkd.errors import ConfigError
from adkd.methods.efficientad.loss import autoencoder_losses, hard_feature_loss, penalty_loss
from adkd.methods.efficientad.network import (
    AutoEncoder,
    EfficientADNetwork,
    PatchDescriptionNetwork,
    sample_elements,
)

# Read from anomalib 2.7.0's efficient_ad.torch_model (Small/MediumPatchDescriptionNetwork with 384
# and 768 output channels, AutoEncoder(384)), counted on the meta device; hard-coded because
# importing anomalib.models takes ~10 s. test_outputs_equal_anomalibs loads those modules anyway.
ANOMALIB_COUNTS = {
    "s": {"teacher": 2_694_144, "student": 4_267_392, "ae": 1_096_320},
    "m": {"teacher": 8_026_624, "student": 11_615_488, "ae": 1_096_320},
}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("size", ["s", "m"])
def test_parameter_counts_and_shapes_at_256(size: str) -> None:
    with torch.device("meta"):
        net = EfficientADNetwork(size)
        x = torch.empty(2, 3, 256, 256)
        counts = {name: n_params(getattr(net, name)) for name in ("teacher", "student", "ae")}
        assert counts == ANOMALIB_COUNTS[size]
        assert net.teacher(x).shape == (2, 384, 56, 56) and net.student(x).shape == (2, 768, 56, 56)
        assert net.ae(x).shape == (2, 384, 56, 56)
        assert net.anomaly_map(x).shape == (2, 1, 256, 256)
        out = net(x, augmented=x, penalty=x)
        assert out["student_aug"].shape == out["ae_aug"].shape == out["teacher_aug"].shape == (2, 384, 56, 56)
        for padding, side in ((False, 67), (True, 75)):  # the autoencoder follows the PDN at any size
            y = torch.empty(1, 3, 300, 333)
            assert PatchDescriptionNetwork(size, 8, padding)(y).shape[-2:] == AutoEncoder(8, padding)(y).shape[-2:]
            assert AutoEncoder(8, padding)(y).shape[-2] == side
        assert EfficientADNetwork(size, padding=True).anomaly_map(x).shape == (2, 1, 256, 256)
    convs = {"s": [0, 3, 6, 8], "m": [0, 3, 6, 8, 10, 12]}[size]  # the official nn.Sequential's indices
    assert list(net.teacher.layers.state_dict()) == [f"{i}.{k}" for i in convs for k in ("weight", "bias")]
    assert list(net.teacher.state_dict()) == [f"layers.{i}.{k}" for i in convs for k in ("weight", "bias")]


def test_teacher_is_frozen_and_stays_in_eval() -> None:
    with torch.device("meta"):
        net = EfficientADNetwork("s").train()
    assert not any(p.requires_grad for p in net.teacher.parameters())
    assert all(p.requires_grad for p in net.student.parameters()) and net.student.training
    assert not net.teacher.training


def test_too_small_image_size_is_a_config_error() -> None:
    for size in (32, 128):
        with pytest.raises(ConfigError, match=f"image_size >= 256.*image_size={size}"):
            EfficientADNetwork("s", image_size=size)
    with pytest.raises(ConfigError, match="'s' or 'm'"):
        PatchDescriptionNetwork("l")


def test_outputs_equal_anomalibs() -> None:
    """Same weights (anomalib's state dicts mapped onto ours by order): same outputs. The PDNs on
    64 px, the autoencoder on 256 px (its encoder needs 256), in eval (no dropout)."""
    from anomalib.models.image.efficient_ad import torch_model as ref

    def copy_into(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
        theirs_sd, ours_sd = theirs.state_dict(), ours.state_dict()
        assert [v.shape for v in theirs_sd.values()] == [v.shape for v in ours_sd.values()]
        ours.load_state_dict(dict(zip(ours_sd, theirs_sd.values(), strict=True)))

    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64)
    for size, cls in (("s", ref.SmallPatchDescriptionNetwork), ("m", ref.MediumPatchDescriptionNetwork)):
        theirs, ours = cls(out_channels=16).eval(), PatchDescriptionNetwork(size, 16).eval()
        copy_into(ours, theirs)
        with torch.no_grad():
            assert torch.allclose(ours(x), theirs(x), atol=1e-5, rtol=0)
    theirs, ours = ref.AutoEncoder(out_channels=16, padding=False).eval(), AutoEncoder(16).eval()
    copy_into(ours, theirs)
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        a, b = ours(x), theirs(x, x.shape[-2:])
    assert a.shape == (1, 16, 56, 56) and torch.allclose(a, b, atol=1e-5, rtol=0)


def test_anomaly_map_scales_combines_pads_and_resizes() -> None:
    net = EfficientADNetwork("s", out_channels=4)
    st, ae = torch.full((1, 1, 56, 56), 3.0), torch.full((1, 1, 56, 56), 5.0)
    net.raw_maps = lambda images: (st, ae)  # the composition alone, no convolutions
    x = torch.zeros(1, 3, 256, 256)
    raw = net.anomaly_map(x)
    assert raw.shape == (1, 1, 256, 256) and raw[0, 0, 128, 128] == 4.0  # unscaled before the quantiles
    expected = F.interpolate(F.pad(torch.full((1, 1, 56, 56), 4.0), (4, 4, 4, 4)), size=(256, 256), mode="bilinear")
    assert torch.allclose(raw, expected)
    net.set_map_quantiles([torch.arange(1001.0)], torch.arange(1001.0).view(1, 1, 7, 143) * 2)
    assert net.q_st_a == 900 and net.q_st_b == 995 and net.q_ae_a == 1800 and net.q_ae_b == 1990
    net.q_st_a.fill_(1.0), net.q_st_b.fill_(3.0), net.q_ae_a.fill_(4.0), net.q_ae_b.fill_(5.0)
    scaled = net.anomaly_map(x)  # both maps at their upper quantile: 0.1 each, 0.1 combined
    assert torch.isclose(scaled[0, 0, 128, 128], torch.tensor(0.1)) and scaled[0, 0, 0, 0] == 0  # the padding
    net.padding = True
    assert torch.allclose(net.anomaly_map(x), torch.full((1, 1, 256, 256), 0.1))


def test_quantile_sample_is_fixed_and_bounded() -> None:
    x = torch.randperm(100).float()
    a = sample_elements(x, 10, torch.Generator().manual_seed(0))
    assert torch.equal(a, sample_elements(x, 10, torch.Generator().manual_seed(0)))
    assert a.numel() == 10 and a.unique().numel() == 10
    assert torch.equal(sample_elements(x.view(10, 10), 100), x)


def test_teacher_statistics_over_all_positions() -> None:
    net = EfficientADNetwork("s", out_channels=3)
    net.teacher = torch.nn.Identity()  # statistics of the images themselves
    torch.manual_seed(0)
    batches = [torch.rand(3, 3, 4, 4) * 2 + 1, torch.rand(1, 3, 4, 4)]  # unequal batches
    net.set_teacher_statistics(b for b in batches)  # a one-shot iterator: read twice all the same
    flat = torch.cat(batches).transpose(0, 1).reshape(3, -1).double()
    assert torch.allclose(net.teacher_mean.flatten().double(), flat.mean(1), atol=1e-6)
    assert torch.allclose(net.teacher_std.flatten().double(), flat.std(1, unbiased=False), atol=1e-6)
    assert torch.allclose(net.teacher_features(batches[1]), (batches[1] - net.teacher_mean) / net.teacher_std)


def test_hard_feature_loss_by_hand() -> None:
    teacher = torch.zeros(1, 1, 10, 100)  # 1000 distances: 998 zeros, one 4, one 9
    student = torch.zeros(1, 2, 10, 100)
    student[0, 1] = 100.0  # the second half is not the teacher's
    student[0, 0, 3, 7], student[0, 0, 5, 50] = 3.0, -2.0
    student.requires_grad_(True)
    loss = hard_feature_loss(teacher, student)  # 0.999 quantile at rank 998.001, between 4 and 9: 4.005
    assert loss.item() == 9.0  # the top distance alone
    loss.backward()
    assert student.grad.count_nonzero() == 1 and student.grad[0, 0, 3, 7] == 6.0
    assert hard_feature_loss(teacher, student.detach(), quantile=0.998).item() == 6.5  # 4 and 9


def test_penalty_and_autoencoder_losses_by_hand() -> None:
    student = torch.cat([torch.full((2, 3, 2, 2), 2.0), torch.full((2, 3, 2, 2), 7.0)], dim=1)
    assert penalty_loss(student, 3).item() == 4.0
    teacher, ae, second = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2), torch.full((1, 3, 2, 2), 3.0)
    losses = autoencoder_losses(teacher, ae, second)
    assert losses["ae"].item() == 1.0 and losses["stae"].item() == 4.0
