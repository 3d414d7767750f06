import math

import pytest
import torch

from adkd.methods.base import AnomalyModule
from adkd.methods.dhkd import DHKD
from adkd.methods.dhkd.network import (
    DHKDNetwork,
    FeatureStandardizer,
    FlowTeacher,
    GlobalFilter,
    affinity,
)


def tiny_dhkd(**kwargs) -> DHKD:
    return DHKD(DHKDNetwork("mobilenet_v2", pretrained=False, image_size=64), **kwargs)


def test_flow_condition_codes_rows_and_columns():
    enc = FlowTeacher([4], [(4, 5)], blocks=1, positional=8).pos0  # anomalib's 2D sin/cos encoding
    assert enc.shape == (8, 4, 5)
    assert torch.allclose(enc[0], torch.arange(5.0)[None, :].sin().expand(4, 5))  # columns, first frequency
    assert torch.allclose(enc[1], torch.arange(5.0)[None, :].cos().expand(4, 5))
    assert torch.allclose(enc[4], torch.arange(4.0)[:, None].sin().expand(4, 5))  # rows
    with pytest.raises(ValueError, match="odd dimension"):
        FlowTeacher([4], [(2, 2)], blocks=1, positional=6)


def test_global_filter_identity_and_a_pure_low_pass():
    gf = GlobalFilter(3, 8, 8)
    with torch.no_grad():
        gf.weight.zero_()
        gf.weight[..., 0] = 1.0
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(gf(x), x, atol=1e-5)
    with torch.no_grad():  # keep only the DC coefficient: every position becomes the channel mean
        gf.weight.zero_()
        gf.weight[:, 0, 0, 0] = 1.0
    assert torch.allclose(gf(x), x.mean(dim=(2, 3), keepdim=True).expand_as(x), atol=1e-5)
    assert gf(torch.randn(1, 3, 12, 10)).shape == (1, 3, 12, 10)  # other sizes: filter resampled


def test_standardizer_learns_then_freezes_its_statistics():
    norm = FeatureStandardizer(2, warmup=2).train()
    data = torch.randn(64, 2, 4, 4) * torch.tensor([3.0, 0.5]).view(1, 2, 1, 1) + 7
    out = norm(data[:32])
    norm(data[32:])
    assert int(norm.seen) == 2
    assert torch.allclose(norm.mean.flatten(), torch.tensor([7.0, 7.0]), atol=0.3)
    assert torch.allclose(norm.std.flatten(), torch.tensor([3.0, 0.5]), rtol=0.1)
    assert out.shape == data[:32].shape
    frozen = norm.mean.clone()
    norm(data * 100)
    assert torch.equal(norm.mean, frozen)


def test_flow_is_invertible_and_its_nll_is_the_gaussian_one():
    torch.manual_seed(0)
    teacher = FlowTeacher([4], [(6, 6)], blocks=2, positional=4)
    x = torch.randn(3, 4, 6, 6)
    zs, nll = teacher([x])
    # Freshly built couplings are the identity up to a global scale: z = s x with log|det| = n log s.
    flow = teacher.flows[0]
    cond = [teacher.pos0.expand(3, -1, -1, -1)]
    back, _ = flow(zs[0], c=cond, rev=True)
    assert torch.allclose(back, x, atol=1e-4)
    z, log_jac = flow(x, c=cond)
    expected = ((0.5 * z.pow(2).flatten(1).sum(1) - log_jac).mean() / z[0].numel()).item()
    assert nll.item() == pytest.approx(expected, rel=1e-5)


def test_flow_nll_falls_when_trained():
    torch.manual_seed(0)
    teacher = FlowTeacher([4], [(6, 6)], blocks=2, positional=0)
    data = torch.randn(16, 4, 6, 6) * 0.2 + 1.0
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    first = teacher([data])[1].item()
    for _ in range(60):
        opt.zero_grad()
        loss = teacher([data])[1]
        loss.backward()
        opt.step()
    # The density of N(1, 0.2^2) per dimension has NLL 0.5 log(2 pi) + log 0.2 + 0.5 = -0.19 (the
    # flow's NLL omits the constant 0.5 log(2 pi) = 0.92): from about +0.5 it must fall well below 0.
    assert first > 0.3 and loss.item() < -0.3


def test_affinity_is_cosine_between_positions():
    x = torch.randn(2, 5, 3, 3)
    a = affinity(x, size=16)
    assert a.shape == (2, 9, 9)
    assert torch.allclose(torch.diagonal(a, dim1=1, dim2=2), torch.ones(2, 9), atol=1e-5)
    assert affinity(torch.randn(1, 5, 40, 40), size=16).shape == (1, 256, 256)
    assert torch.allclose(affinity(x, 16), affinity(3 * x, 16), atol=1e-5)  # scale-free


def test_ablation_switches_change_the_network():
    with_freq = DHKDNetwork("mobilenet_v2", pretrained=False, image_size=64)
    without = DHKDNetwork("mobilenet_v2", pretrained=False, image_size=64, frequency=False)
    assert any(isinstance(m, GlobalFilter) for m in with_freq.modules())
    assert not any(isinstance(m, GlobalFilter) for m in without.modules())
    assert with_freq.extractor.channels == [24, 32, 96]
    assert [s.out.out_channels for s in with_freq.student] == [24, 32, 96]


def _grads(module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize(("epoch", "phase"), [(0, "teacher"), (1, "teacher"), (2, "student"), (3, "student")])
def test_sequential_schedule_trains_one_side_at_a_time(epoch, phase, monkeypatch):
    torch.manual_seed(0)
    model = tiny_dhkd(teacher_fraction=0.5)

    class FakeTrainer:
        max_epochs = 4

    monkeypatch.setattr(DHKD, "trainer", property(lambda self: FakeTrainer()))
    model._trainer = FakeTrainer()
    monkeypatch.setattr(DHKD, "current_epoch", property(lambda self: epoch))
    assert model.phase() == phase
    model.train()
    losses = model.loss({"image": torch.randn(2, 3, 64, 64)})
    losses["loss"].backward()
    assert _grads(model.network.teacher) == (phase == "teacher")
    assert _grads(model.network.student) == (phase == "student")
    assert set(losses) == {"nll", "recon", "affinity", "loss"}
    assert not _grads(model.network.extractor)


def test_noise_only_while_training_and_map_is_the_squared_distance():
    torch.manual_seed(0)
    model = tiny_dhkd(noise_sigma=0.0, post={"map_sigma": 0.0}).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model.network(x)
        amap = model.network.anomaly_map(x)
    assert amap.shape == (2, 1, 64, 64)
    # At stride 16 the map is 4x4; its value at a position, upsampled, sits in the middle of the cell.
    z, s = out["teacher"][2], out["student"][2]
    assert (z - s).pow(2).mean(1).max() <= amap.max() + 1e-5
    assert amap.min() >= 0


def test_topk_score_is_the_mean_of_the_highest_pixels():
    class Constant(torch.nn.Module):
        def anomaly_map(self, images):
            return torch.arange(100.0).view(1, 1, 10, 10).expand(images.shape[0], -1, -1, -1)

    module = AnomalyModule(Constant(), post={"map_sigma": 0.0, "score": "topk", "topk": 0.05})
    _, score = module.predict_maps(torch.zeros(2, 3, 10, 10))
    assert score.tolist() == [97.0, 97.0]  # mean of 95..99
    with pytest.raises(ValueError, match="topk"):
        AnomalyModule(Constant(), post={"score": "topk", "topk": 0.0})
    assert math.isclose(AnomalyModule(Constant(), post={"score": "max"}).post.topk, 0.01)


def test_spectral_filter_as_dft_matrices_equals_torch_fft():
    from adkd.methods.dhkd.network import GlobalFilter

    torch.manual_seed(0)
    layer = GlobalFilter(3, 16, 12)
    for size in ((16, 12), (8, 8)):  # its own size; another (the matrices do not fit: torch.fft)
        x = torch.randn(2, 3, *size)
        layer.dft = "fft"
        reference = layer(x)
        layer.dft = "matmul"  # what an exported model runs
        assert torch.allclose(layer(x), reference, atol=1e-5)
