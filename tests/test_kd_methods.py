"""The KD methods added beside the papers' comparators (RD++, DeSTSeg, DRAEM), against what their official code builds
(parameter counts and output shapes at 256 px, on the meta device: no weights, no compute) and
their losses against hand-computed cases."""

import math

import pytest
import torch

from adkd.methods.rdpp.loss import projection_loss, simplex_like_noise
from adkd.methods.rdpp.network import Projection, RDPPNetwork


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_rdpp_projection_is_the_official_multi_projection_layer():
    # four 3x3 convolutions c -> c/2 -> c/4 -> c/2 -> c with bias: 11.25 c^2 + 2.25 c, for WRN-50-2's
    # 256, 512 and 1024 channels 15,486,912 together
    assert [count(Projection(c)) for c in (256, 512, 1024)] == [737_856, 2_950_272, 11_798_784]
    with torch.device("meta"):
        net = RDPPNetwork("wide_resnet50_2", pretrained=False)
        images = torch.empty(2, 3, 256, 256)
        out = net(images, images)
    shapes = [(256, 64), (512, 32), (1024, 16)]
    for key in ("teacher", "student", "projected", "projected_noisy"):
        assert [(f.shape[1], f.shape[-1]) for f in out[key]] == shapes
    assert count(net.projection) == 15_486_912


def test_rdpp_projection_loss_by_hand():
    p = torch.randn(2, 4, 3, 3)
    # the noisy projection opposite the clean one: 1 - cos = 2; the noisy teacher features equal to
    # the clean projection: cos = 1, so the contrast term is 1 - 0.5
    losses = projection_loss([p.clone()], [p], [-p])
    assert float(losses["reconstruction"]) == pytest.approx(2.0)
    assert float(losses["contrast"]) == pytest.approx(0.5)
    assert float(losses["projection"]) == pytest.approx((0.01 * 2 + 0.1 * 0.5) / 1.11)
    orthogonal = torch.zeros(2, 4, 3, 3)
    orthogonal[:, 0], p2 = 1.0, torch.zeros(2, 4, 3, 3)
    p2[:, 1] = 1.0
    assert float(projection_loss([orthogonal], [p2], [p2])["contrast"]) == pytest.approx(0.0)  # cos 0 < margin


def test_rdpp_noise_is_one_patch_per_image():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 256, 256)
    changed = (simplex_like_noise(images) != images).any(1)
    for mask in changed:
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert 10 <= height < 32 and 10 <= width < 32  # the official code's patch sides at 256 px


def test_destseg_builds_what_the_official_code_builds():
    from adkd.methods.destseg.network import DeSTSegNetwork

    with torch.device("meta"):
        net = DeSTSegNetwork("resnet18", pretrained=False)
        images = torch.empty(2, 3, 256, 256)
        teacher, student, logits = net(images)
        anomaly_map = net.anomaly_map(images)
    # apple/ml-destseg with ResNet-18: teacher (layers 1-3), student (encoder + decoder), segmentation
    # network and its ASPP
    assert count(net.teacher) == 2_782_784 and count(net.student) == 24_665_024
    assert count(net.segmentation) == 7_706_369 and count(net.segmentation.head[0]) == 4_196_864
    assert [(t.shape[1], t.shape[-1]) for t in teacher] == [(64, 64), (128, 32), (256, 16)]
    assert [s.shape for s in student] == [t.shape for t in teacher]
    assert logits.shape == (2, 1, 64, 64) and anomaly_map.shape == (2, 1, 256, 256)


def test_destseg_losses_by_hand():
    from adkd.methods.destseg.loss import denoising_loss, segmentation_loss

    t = [torch.nn.functional.normalize(torch.randn(3, 8, 4, 4), dim=1) for _ in range(2)]
    assert float(denoising_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    # opposite features: 1 - cos = 2 at every position, summed over 3 images and 2 scales
    assert float(denoising_loss(t, [-x for x in t])) == pytest.approx(12.0)
    # logits 0: p = 0.5 everywhere, so focal = ln 2 x 0.5^4 and L1 = 0.5, whatever the mask
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8, :] = 1
    losses = segmentation_loss(torch.zeros(1, 1, 4, 4), mask, gamma=4.0)
    assert float(losses["focal"]) == pytest.approx(math.log(2) / 16) and float(losses["l1"]) == pytest.approx(0.5)
    # a confident, right prediction at 1/4 of the mask's size (the mask brought down bilinearly)
    right = torch.full((1, 1, 4, 4), -20.0)
    right[..., :2, :] = 20.0
    assert float(segmentation_loss(right, mask)["l1"]) == pytest.approx(0.0, abs=1e-6)


def test_draem_builds_what_the_official_code_builds():
    from adkd.methods.draem.network import DRAEMNetwork

    with torch.device("meta"):
        net = DRAEMNetwork()
        reconstruction, logits = net(torch.empty(2, 3, 256, 256))
    # the official code's ReconstructiveSubNetwork(3, 3, 128) and DiscriminativeSubNetwork(6, 2, 64)
    # (anomalib's DraemModel counts the same)
    assert (count(net.reconstructive), count(net.discriminative)) == (69_048_579, 28_374_146)
    assert reconstruction.shape == (2, 3, 256, 256) and logits.shape == (2, 2, 256, 256)


@pytest.mark.slow  # importing anomalib's models takes seconds
def test_draem_networks_as_large_as_anomalibs():
    from anomalib.models.image.draem.torch_model import DraemModel

    from adkd.methods.draem.network import DRAEMNetwork

    with torch.device("meta"):
        ours, theirs = DRAEMNetwork(), DraemModel()
    assert count(ours.reconstructive) == count(theirs.reconstructive_subnetwork) == 69_048_579
    assert count(ours.discriminative) == count(theirs.discriminative_subnetwork) == 28_374_146


@pytest.mark.slow  # importing anomalib's models takes seconds
def test_anomalibs_draem_loss_gives_normal_pixels_no_segmentation_loss():
    # What the peer check's --anomalib-official works around: anomalib's DraemLoss takes kornia's
    # FocalLoss(alpha=1), and kornia weights class 0 by 1 - alpha; adkd's focal loss (the official
    # one) weights both classes by 1.
    from anomalib.models.image.draem.loss import DraemLoss

    from adkd.methods.components.losses import focal_segmentation_loss

    logits = torch.tensor([-1.0, 2.0]).view(1, 2, 1, 1).expand(1, 2, 4, 4).clone()  # "anomalous" everywhere
    normal = torch.zeros(1, 1, 4, 4)
    assert float(DraemLoss().focal_loss(logits, normal[:, 0].long())) == 0.0
    p = torch.sigmoid(torch.tensor(-3.0))  # the normal class's softmax probability
    expected = float(-((1 - p) ** 2) * p.log())  # the official code's mean over pixels
    assert float(focal_segmentation_loss(logits, normal)) == pytest.approx(expected, rel=1e-5)


def test_draem_refuses_images_too_small_for_its_autoencoder(tmp_path):
    from adkd.errors import ConfigError
    from adkd.methods.draem.network import DRAEMNetwork

    with pytest.raises(ConfigError, match=r"image_size=32 is too small for DRAEM: .* image_size >= 64"):
        DRAEMNetwork(32, 16, image_size=32)


def test_draem_ssim_is_the_gaussian_window_ssim():
    from skimage.metrics import structural_similarity

    from adkd.methods.draem.loss import ssim_loss, ssim_map

    torch.manual_seed(0)
    x = torch.rand(1, 1, 48, 48)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    # inside the border (where zero padding reaches no window), scikit-image's Gaussian SSIM
    reference = structural_similarity(
        x[0, 0].numpy(), y[0, 0].numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )
    assert float(ssim_map(x, y)[..., 5:-5, 5:-5].mean()) == pytest.approx(reference, abs=1e-5)
    # constant images: (2ab + C1) / (a^2 + b^2 + C1)
    a, b = (torch.full((1, 1, 32, 32), v, dtype=torch.float64) for v in (0.2, 0.6))
    assert float(ssim_map(a, b)[..., 5:-5, 5:-5].mean()) == pytest.approx((0.24 + 1e-4) / (0.4 + 1e-4), abs=1e-6)
    assert float(ssim_loss(x, x)) == pytest.approx(0.0, abs=1e-6)


def test_draem_scores_the_maximum_of_the_maps_21_pixel_means():
    from adkd.methods.components.postprocess import PostProcessor

    raw = torch.zeros(1, 1, 64, 64)
    raw[..., 10:13, 40:43] = 1.0  # 9 hot pixels: the best 21 x 21 window holds all 9
    assert float(PostProcessor(map_sigma=0, score_box=21)(raw)[1]) == pytest.approx(9 / 441)
    with pytest.raises(ValueError, match="odd side"):
        PostProcessor(score_box=20)


def test_draem_scores_by_the_official_window_in_its_paper_recipe_and_by_the_map_max_in_the_small_one(tmp_path):
    from adkd.training.config import compose

    boxes = {
        b: compose(["method=draem", "dataset=textures", f"budget={b}"], tmp_path).post.score_box
        for b in ("paper", "demo", "converged")
    }
    assert boxes == {"paper": 21, "demo": 1, "converged": 1}


def test_destseg_skips_a_last_batch_of_one_image():
    """An epoch whose last batch holds one image (441 ELPV mono cells at DeSTSeg's batch 8) ends before it:
    the segmentation's ASPP cannot train on it (BatchNorm over one value per channel). -1 is
    Lightning's "end this epoch"; other batches train."""
    from adkd.methods.destseg import DeSTSeg
    from adkd.methods.destseg.network import DeSTSegNetwork

    module = DeSTSeg(DeSTSegNetwork("resnet18", pretrained=False))
    one, three = {"image": torch.zeros(1, 3, 32, 32)}, {"image": torch.zeros(3, 3, 32, 32)}
    assert module.on_train_batch_start(one, batch_idx=2) == -1
    assert module.on_train_batch_start(three, batch_idx=2) is None
    assert module.on_train_batch_start(one, batch_idx=0) is None  # an epoch's only batch still trains
    module.network.segmentation.train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # what the skip avoids
        module.network.segment(*module.network.features(torch.rand(1, 3, 64, 64)))
