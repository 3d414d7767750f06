import pytest
import torch

from adkd.methods.components.postprocess import gaussian_blur
from adkd.methods.rd4ad import RD4ADNetwork
from adkd.methods.rd4ad.loss import reverse_distillation_loss
from adkd.methods.registry import build_method, method_names
from adkd.methods.stfpm import STFPMNetwork
from adkd.methods.stfpm.module import feature_pyramid_loss
from tests.conftest import method_params, smallest_image


def test_rd4ad_with_wide_resnet_has_the_papers_shapes():
    net = RD4ADNetwork("wide_resnet50_2", pretrained=False, decoder_blocks=[1, 1, 1], bottleneck_blocks=1)
    x = torch.zeros(1, 3, 64, 64)
    teacher, student = net(x)
    assert [tuple(t.shape[1:]) for t in teacher] == [(256, 16, 16), (512, 8, 8), (1024, 4, 4)]
    assert [s.shape for s in student] == [t.shape for t in teacher]
    assert net.bottleneck.out_channels == 2048
    assert net.bottleneck(teacher).shape[-1] == 2  # one more halving: 2048 @ 1/32


def test_rd4ad_sizes_itself_from_the_backbone():
    net = RD4ADNetwork("mobilenet_v2", pretrained=False)
    teacher, student = net(torch.zeros(2, 3, 64, 64))
    assert [s.shape[1] for s in student] == [24, 32, 96]
    assert net.anomaly_map(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 64, 64)


def test_rd4ad_loss_modes():
    t = [torch.randn(2, 8, 4, 4)]
    assert float(reverse_distillation_loss(t, [t[0].clone()], "flat")) == pytest.approx(0, abs=1e-6)
    assert float(reverse_distillation_loss(t, [-t[0]], "pixel")) == pytest.approx(2, abs=1e-6)
    # flat: one cosine over C*H*W; pixel: a cosine per position. They differ when only some
    # positions disagree in direction.
    s = t[0].clone()
    s[:, :, 0, 0] *= -1
    flat, pixel = reverse_distillation_loss(t, [s], "flat"), reverse_distillation_loss(t, [s], "pixel")
    assert float(pixel) == pytest.approx(2 / 16, abs=1e-6)
    assert float(flat) != pytest.approx(float(pixel), abs=1e-3)
    with pytest.raises(ValueError):
        reverse_distillation_loss(t, t, "l2")


def test_stfpm_loss_and_map_vanish_when_student_equals_teacher():
    net = STFPMNetwork("resnet18", pretrained=False)
    net.student.load_state_dict(net.teacher.state_dict())
    net.eval()
    x = torch.randn(1, 3, 64, 64)
    teacher, student = net(x)
    assert float(feature_pyramid_loss(teacher, student)) == pytest.approx(0, abs=1e-6)
    assert float(net.anomaly_map(x).abs().max()) == pytest.approx(0, abs=1e-6)


def test_stfpm_loss_value():
    t = [torch.tensor([[[[1.0]], [[0.0]]]])]  # one position, channels (1, 0)
    s = [torch.tensor([[[[0.0]], [[1.0]]]])]  # orthogonal: ||t - s||^2 = 2
    assert float(feature_pyramid_loss(t, s)) == pytest.approx(1.0)


def test_blur_keeps_mass_and_sigma_zero_is_identity():
    x = torch.zeros(1, 1, 41, 41)
    x[..., 20, 20] = 1
    assert torch.equal(gaussian_blur(x, 0), x)
    y = gaussian_blur(x, 2.0)
    assert float(y.sum()) == pytest.approx(1.0, abs=1e-4)
    assert float(y.max()) < 0.05


def test_blur_matches_the_full_2d_gaussian_kernel():
    from torchvision.transforms.v2 import functional as TF

    x = torch.rand(2, 1, 48, 48)
    reference = TF.gaussian_blur(x, [33, 33], [4.0, 4.0])  # 2-D kernel, reflected borders
    assert torch.allclose(gaussian_blur(x, 4.0), reference, atol=1e-5)


def test_rd4ad_and_rdpp_upsample_their_maps_with_aligned_corners_like_the_official_code():
    """The official cal_anomaly_map (RD4AD's, kept by RD++) upsamples with align_corners=True: a
    coarse cell's value sits exactly on the image's corner pixel (anomalib's port agrees)."""
    from adkd.methods.components.maps import combine_scales
    from adkd.methods.rdpp.network import RDPPNetwork

    coarse = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    aligned = combine_scales([coarse], (5, 5), align_corners=True)
    assert aligned[0, 0, 0, -1].item() == 1.0 and aligned[0, 0, 2, 2].item() == 1.5
    assert combine_scales([coarse], (5, 5))[0, 0, 0, 1].item() == pytest.approx(0.1)  # default: centres inside
    torch.manual_seed(0)
    images = torch.rand(1, 3, 64, 64)
    for net in (RD4ADNetwork("resnet18", pretrained=False), RDPPNetwork("resnet18", pretrained=False)):
        net.eval()
        with torch.no_grad():
            out = net(images)
            teacher, student = out if isinstance(out, tuple) else (out["teacher"], out["student"])
            expected = sum(
                torch.nn.functional.interpolate(
                    1 - torch.nn.functional.cosine_similarity(t, s).unsqueeze(1),
                    size=(64, 64),
                    mode="bilinear",
                    align_corners=True,
                )
                for t, s in zip(teacher, student, strict=True)
            )
            assert torch.allclose(net.anomaly_map(images), expected, atol=1e-6)


def test_rd4ad_mirrors_basic_block_encoders_like_the_official_code():
    net = RD4ADNetwork("resnet18", pretrained=False)
    assert net.bottleneck.out_channels == 512 and len(net.bottleneck.fuse) == 2
    assert [len(stage) for stage in net.student.stages] == [2, 2, 2]
    assert len(net.student.stages[0][0].body) == 5  # conv-bn-relu-conv-bn: a BasicBlock mirrored
    teacher, student = net(torch.zeros(1, 3, 64, 64))
    assert [s.shape for s in student] == [t.shape for t in teacher]


@pytest.mark.parametrize("name", method_params())
def test_inference_layout_leaves_the_maps_unchanged(name, tiny_mvtec, tmp_path):
    torch.manual_seed(0)
    size = max(64, smallest_image(name))
    model = build_method(name, "backbone.pretrained=false", f"image_size={size}").eval()
    model.fit_example(torch.rand(2, 3, size, size))
    x = torch.randn(2, 3, size, size)
    before, score_before = model.predict_maps(x)
    model.prepare_for_inference()
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    after, score_after = model.predict_maps(x)
    # Float rounding only: reductions run in another order. RD++'s InstanceNorm moves its maps by 2e-5
    # of their range on one CPU and by 1e-3 on another (max 4e-4 of a 0.415 range; scores by 3e-4 of
    # 3.1), where a wrong layout moves them by the whole range.
    spread = float(before.max() - before.min())
    assert torch.allclose(before, after, rtol=1e-4, atol=max(1e-5, 2e-3 * spread))
    assert torch.allclose(score_before, score_after, rtol=2e-4, atol=1e-5)


def test_blur_of_a_map_smaller_than_its_kernel_cuts_the_kernel_to_the_map():
    x = torch.zeros(1, 1, 16, 16)
    x[..., 8, 8] = 1.0
    y = gaussian_blur(x, 8.0)  # +-32 px kernel on a 16 px map
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert 0 < y.min().item() and y.max().item() < 2 * y.mean().item()  # spread over the whole map


@pytest.mark.parametrize("name", method_names())
def test_what_trains_starts_in_training_mode(name):
    """Lightning does not call train() when fitting starts: a trainable module built in eval mode
    trains with its BatchNorm statistics frozen at their initial values (STFPM's and ADPS's
    students did, until this test)."""
    model = build_method(name, "backbone.pretrained=false", f"image_size={max(64, smallest_image(name))}")

    def trains(m: torch.nn.Module) -> bool:
        return any(p.requires_grad for p in m.parameters(False))

    on_purpose = tuple(
        f"network.{name}" for name in getattr(model.network, "frozen_statistics", ())
    )  # UniNet's small recipe
    stuck = [n for n, m in model.named_modules() if not m.training and trains(m) and not n.startswith(on_purpose)]
    assert not stuck, f"{name}: trainable modules in eval mode: {stuck[:5]}"
    bn = torch.nn.BatchNorm2d
    frozen = [n for n, m in model.named_modules() if isinstance(m, bn) and m.training and not trains(m)]
    assert not frozen, f"{name}: frozen BatchNorm in training mode: {frozen[:5]}"
