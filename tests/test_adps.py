import pytest
import torch
import torch.nn.functional as F

from adkd.backbones import FeatureExtractor
from adkd.data.synthesis import AnomalySynthesizer
from adkd.methods.adps.loss import masked_distillation_loss
from adkd.methods.adps.network import ADPSNetwork, PatchStudent, from_patches, to_patches
from adkd.methods.components.losses import focal_segmentation_loss


def test_patches_round_trip_in_row_major_order():
    x = torch.randn(2, 3, 8, 8)
    p = to_patches(x, 2)
    assert p.shape == (8, 3, 4, 4)
    assert torch.equal(p[1], x[0, :, 0:4, 4:8]) and torch.equal(p[6], x[1, :, 4:8, 0:4])
    assert torch.equal(from_patches(p, 2), x)
    with pytest.raises(ValueError, match="does not split"):
        to_patches(torch.zeros(1, 1, 6, 6), 4)


def test_student_sees_each_patch_alone():
    student = PatchStudent("resnet18", (1, 2, 3), k=2).eval()  # every stage on patches
    extractor = FeatureExtractor("resnet18", (1, 2, 3), pretrained=False).eval()
    extractor.load_state_dict(student.state_dict())
    x = torch.randn(1, 3, 64, 64)
    y = x.clone()
    y[..., :32, :32] += 5  # change the top-left patch only
    with torch.no_grad():
        fx, fy = student(x), student(y)
        full_x, full_y = extractor(x), extractor(y)
    for a, b in zip(fx, fy, strict=True):
        h = a.shape[-1] // 2
        assert not torch.allclose(a[..., :h, :h], b[..., :h, :h])
        assert torch.equal(a[..., h:, :], b[..., h:, :]) and torch.equal(a[..., :, h:], b[..., :, h:])
    assert not torch.equal(full_x[2][..., 2:, 2:], full_y[2][..., 2:, 2:])  # the whole-image teacher mixes


def test_k1_student_is_the_symmetric_case():
    student = PatchStudent("mobilenet_v2", (1, 2, 3), k=1).eval()
    extractor = FeatureExtractor("mobilenet_v2", (1, 2, 3), pretrained=False).eval()
    extractor.load_state_dict(student.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(student(x), extractor(x), strict=True):
            assert torch.equal(a, b)


def test_weight_mask_block_and_maps():
    net = ADPSNetwork("mobilenet_v2", pretrained=False, k=2, psm_widths=[8, 8, 8]).eval()
    assert net.student.patch_stages == {0, 1}  # the paper's: input and stage 1 on patches
    t = [torch.randn(1, 4, 2, 2)]
    cos, merged = net.weight_mask(t, [t[0].clone()])
    assert torch.allclose(cos[0], torch.ones(1, 1, 2, 2))
    assert torch.allclose(merged[0], torch.zeros(1, 4, 2, 2), atol=1e-5)
    cos, merged = net.weight_mask(t, [-t[0]])
    assert torch.allclose(merged[0], 2 * t[0])  # (1 - W) T with W = -1
    x = torch.randn(2, 3, 64, 64)
    assert net.anomaly_map(x).shape == (2, 1, 64, 64)
    assert 0 <= float(net.anomaly_map(x).min()) and float(net.anomaly_map(x).max()) <= 1  # a probability
    no_psm = ADPSNetwork("mobilenet_v2", pretrained=False, k=2, psm=False).eval()
    assert no_psm.psm is None and no_psm.anomaly_map(x).shape == (2, 1, 64, 64)
    # scoring by the coarse map: sum over scales of 1 - W_i, upsampled, whatever the PSM says
    net.inference_map = "coarse"
    weights = net(x)["weights"]
    coarse = sum(F.interpolate(1 - w, size=(64, 64), mode="bilinear", align_corners=False) for w in weights)
    assert torch.allclose(net.anomaly_map(x), coarse, atol=1e-6) and float(coarse.max()) > 1  # not a probability


def test_student_init_random_differs_from_teacher_and_copy_matches():
    x = torch.rand(1, 3, 64, 64)
    copy = ADPSNetwork("mobilenet_v2", pretrained=False, k=1, student_init="teacher", psm=False).eval()
    fresh = ADPSNetwork("mobilenet_v2", pretrained=False, k=1, psm=False).eval()
    with torch.no_grad():
        assert torch.allclose(copy(x)["weights"][0], torch.ones(1, 1, 16, 16), atol=1e-5)  # S = T at step 0
        assert float(fresh(x)["weights"][0].mean()) < 0.9


def test_detach_stops_the_segmentation_gradient_at_the_student():
    x = torch.rand(2, 3, 64, 64)
    for detach, reaches in ((False, True), (True, False)):
        net = ADPSNetwork("mobilenet_v2", pretrained=False, k=2, psm_widths=[4, 4, 4], detach=detach)
        net(x)["logits"].sum().backward()
        grads = [p.grad for p in net.student.parameters() if p.grad is not None]
        assert bool(grads and any(g.abs().sum() > 0 for g in grads)) == reaches


def test_ablations_without_teacher_or_student_and_concat_kernel():
    x = torch.rand(1, 3, 64, 64)
    no_student = ADPSNetwork("mobilenet_v2", pretrained=False, k=2, psm_widths=[4, 4, 4], without="student")
    assert no_student.student is None and no_student(x)["teacher"] is not None
    no_teacher = ADPSNetwork("mobilenet_v2", pretrained=False, k=2, psm_widths=[4, 4, 4], without="teacher")
    out = no_teacher(x)
    assert out["teacher"] is None and out["logits"].shape == (1, 2, 64, 64)
    concat = ADPSNetwork("mobilenet_v2", pretrained=False, k=2, psm_widths=[4, 4, 4], wmb="concat")
    assert concat.merge[0].kernel_size == (3, 3)
    with pytest.raises(ValueError, match="without must be one of"):
        ADPSNetwork("mobilenet_v2", pretrained=False, without="both")
    with pytest.raises(ValueError, match="needs psm=true"):
        ADPSNetwork("mobilenet_v2", pretrained=False, without="teacher", psm=False)


def test_masked_distillation_loss_values():
    t = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)]
    empty, full = torch.zeros(2, 1, 16, 16), torch.ones(2, 1, 16, 16)
    assert float(masked_distillation_loss(t, t, empty)) == pytest.approx(0, abs=1e-6)  # normal: pulled together
    assert float(masked_distillation_loss(t, t, full)) == pytest.approx(2, abs=1e-5)  # forged: cos 1 per scale
    assert float(masked_distillation_loss(t, [-x for x in t], full)) == pytest.approx(-2, abs=1e-5)
    assert float(masked_distillation_loss(t, t, full, "mse", margin=1.0)) == pytest.approx(2, abs=1e-6)
    quarter = torch.zeros(2, 1, 16, 16)
    quarter[..., :2, :2] = 1  # a quarter of the top-left position at the 4x4 scale
    soft = masked_distillation_loss(t[:1], t[:1], quarter, binary=False)
    assert float(soft) == pytest.approx(0.25 / 16, abs=1e-5)  # area-averaged Y: 1/4 at one of 16 positions
    assert float(masked_distillation_loss(t[:1], t[:1], quarter)) == pytest.approx(0, abs=1e-6)  # binary: Y = 0


def test_focal_loss_is_small_for_confident_right_answers():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    logits = torch.stack([1 - mask[:, 0], mask[:, 0]], dim=1) * 20 - 10
    assert float(focal_segmentation_loss(logits, mask)) < 1e-6
    assert float(focal_segmentation_loss(-logits, mask)) > 1


def test_focal_loss_is_the_mean_over_pixels_of_the_true_class_term():
    # DRAEM's official code: -(1 - p_t)^2 log p_t averaged over pixels (kornia's own "mean" halves it)
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 0, 0] = 2.0  # one pixel leans anomalous
    mask = torch.zeros(1, 1, 2, 2)
    mask[..., 0, 0] = 1  # and is
    p_right = torch.sigmoid(torch.tensor(2.0))
    terms = torch.tensor([-((1 - p_right) ** 2) * p_right.log(), *[-(0.5**2) * torch.log(torch.tensor(0.5))] * 3])
    assert float(focal_segmentation_loss(logits, mask)) == pytest.approx(float(terms.mean()), rel=1e-6)


def test_synthesis_is_reproducible_and_respects_probability():
    x = torch.rand(4, 3, 32, 32)
    torch.manual_seed(0)
    a, ma = AnomalySynthesizer(probability=1.0)(x)
    torch.manual_seed(0)
    b, mb = AnomalySynthesizer(probability=1.0)(x)
    assert torch.equal(a, b) and torch.equal(ma, mb)
    assert all(m.sum() > 0 for m in ma) and set(ma.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(a * (1 - ma), x * (1 - ma))  # only masked pixels change
    same, empty = AnomalySynthesizer(probability=0.0)(x)
    assert torch.equal(same, x) and empty.sum() == 0


def test_missing_anomaly_source_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        AnomalySynthesizer(source=str(tmp_path))
