"""UniNet against what its official code builds and computes (tests/uninet_reference.py), and its parts
by hand."""

import math

import numpy as np
import pytest
import torch

from adkd.methods.components.postprocess import PostProcessor, gaussian_blur
from adkd.methods.registry import build_method
from adkd.methods.uninet.loss import select_features, uninet_loss
from adkd.methods.uninet.network import UniNetNetwork, decision_share
from tests import uninet_reference as official


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_uninet_has_the_official_parameter_counts():
    with torch.device("meta"):
        ref = official.OfficialUniNet()
        net = UniNetNetwork("wide_resnet50_2", pretrained=False)
    # the official networks, with what they hold and never use: BN_layer's conv4/bn4 and each
    # AttnBottleneck's bn7, the decoder's fc
    unused_bn = count(ref.bn.conv4) + count(ref.bn.bn4) + sum(count(b.bn7) for b in ref.bn.bn_layer[0])
    assert count(ref.bn) == 78_821_376 and unused_bn == 8_398_848
    assert count(ref.student) == 24_917_761 and count(ref.student.fc) == 257
    assert count(ref.source) == count(ref.target) == 24_862_528  # WRN-50-2 up to layer3
    # adkd's: the same networks without the unused parts; 145.1 M parameters in all, 120.2 M trained
    assert count(net.bottleneck) == 78_821_376 - 8_398_848 == 70_422_528
    assert count(net.student) == 24_917_761 - 257
    assert count(net) == 145_065_088
    assert count(net.teacher) == count(net.target) == count(ref.source)
    assert all(p.requires_grad for p in net.target.parameters())
    assert not any(p.requires_grad for p in net.teacher.parameters())


@pytest.fixture(scope="module")
def same_weights():
    torch.manual_seed(0)
    ref = official.OfficialUniNet()
    for m in ref.modules():  # running statistics away from their start, so that a misplaced one shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    net = UniNetNetwork("wide_resnet50_2", pretrained=False)
    net.load_state_dict(official.adkd_state_dict(ref), strict=True)
    return ref, net


def _normalised(images: torch.Tensor, net: UniNetNetwork) -> torch.Tensor:
    return net.teacher.normalize(images)


def test_uninet_gives_the_official_forward_on_the_same_weights(same_weights):
    torch.set_num_threads(1)
    ref, net = same_weights
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ref.eval(), net.eval()
    with torch.no_grad():
        ref_t, ref_s = ref(_normalised(images, net))
        t, s = net(images)
        raw, share = net.anomaly_map(images)
    assert len(t) == len(s) == 6
    worst = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(t + s, ref_t + ref_s, strict=True))
    assert worst < 1e-5
    # the map and the weighted decision
    outputs = [
        [(1 - torch.nn.functional.cosine_similarity(tt, ss))[i : i + 1] for i in range(2)]
        for tt, ss in zip(ref_t, ref_s, strict=True)
    ]
    scores, ref_map, weights = official.weighted_decision(
        outputs, 0.01, 3e-5, 64, blur=lambda m: gaussian_blur(torch.tensor(m)[None, None], 4.0)[0, 0].numpy()
    )
    assert np.allclose(raw[:, 0].numpy(), ref_map, atol=1e-5)
    assert np.allclose(share.numpy(), weights, rtol=1e-5)
    post = PostProcessor(map_sigma=0.0, score_sigma=4.0, score="weighted")
    anomaly_map, score = post((raw, share))
    assert torch.equal(anomaly_map, raw)  # the official pixel map is not smoothed
    assert np.allclose(score.numpy(), scores, rtol=1e-5)
    # with the official scipy blur (whose border reflects about the edge, kornia's about the edge pixel)
    scipy_scores, _, _ = official.weighted_decision(outputs, 0.01, 3e-5, 64)
    assert np.allclose(score.numpy(), scipy_scores, rtol=0.02)


def test_uninet_trains_on_the_official_loss(same_weights):
    torch.set_num_threads(1)
    ref, net = same_weights
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ref.train(), net.train()
    ref.source.eval()
    for temperature in (2.0, 0.1):
        ref_t, ref_s = ref(_normalised(images, net))
        expected = official.losses(ref_t, official.feature_selection(ref_s, ref_t), temperature)
        t, s = net(images)
        got = uninet_loss(t, select_features(s, t), temperature)["loss"]
        assert float(got) == pytest.approx(float(expected), rel=1e-5)
    assert not net.teacher.training and net.target.training  # the target teacher's BatchNorm trains


def test_uninet_loss_by_hand():
    # two positions, student = teacher = two orthonormal vectors, temperature 1: p(i, i) = e / (e + 1)
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)
    losses = uninet_loss([t], [t.clone()], temperature=1.0)
    p = math.e / (math.e + 1)
    assert float(losses["cosine"]) == pytest.approx(0.0, abs=1e-6)
    assert float(losses["contrast"]) == pytest.approx(-math.log(p), rel=1e-5)
    assert float(losses["margin"]) == pytest.approx(1 - p, rel=1e-5)
    assert float(losses["loss"]) == pytest.approx(0.3 * -math.log(p) + 1 - p, rel=1e-5)
    # one position: the contrast has nothing to tell apart; opposite vectors: 1 - cos = 2
    losses = uninet_loss([t[..., :1]], [-t[..., :1]], temperature=1.0)
    assert float(losses["cosine"]) == pytest.approx(2.0) and float(losses["margin"]) == pytest.approx(0.0, abs=1e-6)


def test_feature_selection_by_hand():
    teacher = torch.tensor([0.0, math.log(3.0)]).reshape(1, 1, 1, 2)  # softmax over positions: 1/4, 3/4
    student = torch.ones(1, 1, 1, 2)
    (selected,) = select_features([student], [teacher])
    mean = math.log(3.0) / 2
    assert selected.flatten().tolist() == pytest.approx([0.25 * (1 + mean), 0.75 * (1 + mean)])


def test_weighted_decision_share_and_score_by_hand():
    maps = [torch.full((1, 1, 2, 2), 1.0) for _ in range(5)] + [torch.full((1, 1, 2, 2), 3.0)]
    # one peak above the others: only its probability is above the mean
    assert float(decision_share(maps, alpha=0.01, beta=3e-5)) == pytest.approx(0.03)
    assert float(decision_share([m * 0 for m in maps], alpha=0.01, beta=3e-5)) == pytest.approx(3e-5)
    post = PostProcessor(map_sigma=0.0, score_sigma=0.0, score="weighted")
    flat = torch.arange(100.0).reshape(1, 1, 10, 10).repeat(2, 1, 1, 1)
    _, score = post((flat, torch.tensor([0.03, 0.005])))
    assert score.tolist() == pytest.approx([98.0, 99.0])  # the top 3 (97, 98, 99); at least one pixel
    with pytest.raises(ValueError, match="needs a network that sets a share"):
        post(flat)


def test_uninet_takes_the_official_class_settings_on_mvtec_only(tmp_path):
    transistor = build_method("uninet", "dataset=mvtec", "category=transistor", f"dataset.root={tmp_path}")
    assert (transistor.temperature, transistor.feature_selection, transistor.teacher_lr) == (0.1, False, 1e-4)
    assert build_method("uninet", "dataset=mvtec", "category=carpet", f"dataset.root={tmp_path}").temperature == 2.0
    folder = build_method("uninet", "dataset=folder", "category=transistor", f"dataset.root={tmp_path}")
    assert (folder.temperature, folder.feature_selection) == (2.0, True)
    groups = folder.trainable_parameters()
    assert groups[1]["lr"] == 1e-6 and {id(p) for p in groups[1]["params"]} == {
        id(p) for p in folder.network.target.parameters()
    }


def test_the_target_teachers_statistics_train_in_the_paper_recipe_and_stay_in_the_small_one():
    paper = build_method("uninet", "budget=paper", "backbone.pretrained=false").train()
    assert paper.network.target.training and paper.network.frozen_statistics == ()
    small = build_method("uninet", "budget=demo", "backbone.pretrained=false").train()
    assert not small.network.target.training and small.network.student.training
    assert all(p.requires_grad for p in small.network.target.parameters())  # its weights still train
    assert small.network.frozen_statistics == ("target",)
