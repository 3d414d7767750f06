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


@pytest.mark.slow  # importing anomalib's models alone takes ~10 s
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


# -- the method: training, validation quantiles, step budget, teacher files, penalty and distillation images --


def _module(*overrides: str):
    from adkd.methods.registry import build_method

    return build_method("efficientad", "image_size=256", *overrides)


def test_one_training_step_lowers_the_hard_loss_and_validation_sets_the_quantiles() -> None:
    """The module's own loss (hard + autoencoder + student-autoencoder; the penalty is tested by
    hand above) and optimiser: one step lowers the hard loss on the image trained on (seed 0: by
    1.7% at lr 4e-4, 0.6% at the paper's 1e-4; at 1e-3 Adam's first step overshoots and it rises,
    while the mean distance over all positions rises at every rate: the step works on the hardest
    0.1%); a validation pass then sets the quantiles so that the normalised maps of the validation
    images have q_a at 0 and q_b at 0.1."""
    torch.manual_seed(0)
    model = _module("method.penalty_images=none", "lr=4e-4").train()
    images = torch.rand(1, 3, 256, 256)
    model.network.set_teacher_statistics([images])
    optimizer = model.optimizer_factory(params=model.trainable_parameters())
    assert optimizer.param_groups[0]["weight_decay"] == 1e-5
    losses = model.loss({"image": images})
    assert set(losses) == {"hard", "ae", "stae", "loss"}
    assert torch.isclose(losses["loss"], losses["hard"] + losses["ae"] + losses["stae"])
    losses["loss"].backward()
    assert model.network.teacher.layers[0].weight.grad is None  # frozen
    optimizer.step()
    model.eval()
    model.on_validation_epoch_start()
    with torch.no_grad():
        after = model.validation_step({"image": images}, 0)  # the same image, the same losses but the penalty
    assert after["hard"] < 0.99 * losses["hard"].detach()
    st, ae = model._val_maps[0]
    model.trainer = type("Trainer", (), {"sanity_checking": False})()
    model.on_validation_epoch_end()
    net = model.network
    for raw, qa, qb in ((st, net.q_st_a, net.q_st_b), (ae, net.q_ae_a, net.q_ae_b)):
        scaled = 0.1 * (raw - qa) / (qb - qa)
        q = torch.quantile(scaled.flatten(), torch.tensor([0.9, 0.995]))
        assert torch.allclose(q, torch.tensor([0.0, 0.1]), atol=1e-6)


def test_the_step_budget_and_the_rate_decay_at_95_percent() -> None:
    model = _module("method.steps=100")
    model.trainer = type("Trainer", (), {"estimated_stepping_batches": 1000.0})()
    assert model.total_steps() == 100  # the steps end first
    scheduler = model.configure_optimizers()["lr_scheduler"]
    assert scheduler["interval"] == "step" and scheduler["scheduler"].milestones == {95: 1}
    model.trainer = type("Trainer", (), {"estimated_stepping_batches": 40.0})()
    assert model.total_steps() == 40  # the epochs end first
    from adkd.training.config import compose

    paper = compose(["method=efficientad", "dataset=mvtec", "image_size=256"], "outputs/unused")
    recipe = (paper.method.steps, paper.batch_size, paper.lr, paper.method.optimizer.weight_decay)
    assert recipe == (70000, 1, 1e-4, 1e-5)
    assert paper.max_epochs >= paper.method.steps  # the steps decide, not the epochs


def test_a_checkpoint_rebuilds_without_the_teacher_file(tmp_path) -> None:
    """The teacher file is read when training starts, not when the model is built: a checkpoint's
    stored config naming a file (or download) that is not there still rebuilds."""
    model = _module(f"method.teacher_weights={tmp_path / 'gone.pth'}")
    assert model.teacher_weights.endswith("gone.pth")
    with pytest.raises(ConfigError, match="teacher file not found"):
        model.setup("fit")


def _pdn_state(size: str, names: str) -> dict[str, torch.Tensor]:
    """A PDN state dict under the names anomalib's (conv1..) or the official code's (0, 3, ..) files use."""
    pdn = PatchDescriptionNetwork(size, 384)
    convs = [m for m in pdn.layers if isinstance(m, torch.nn.Conv2d)]
    state = {}
    for i, conv in enumerate(convs):
        key = f"conv{i + 1}" if names == "anomalib" else str(list(pdn.layers).index(conv))
        state[f"{key}.weight"], state[f"{key}.bias"] = conv.weight.detach(), conv.bias.detach()
    return state


@pytest.mark.parametrize("names", ["anomalib", "official"])
def test_teacher_files_load_by_order_with_shapes_checked(names, tmp_path) -> None:
    from adkd.errors import BackboneWeightsError
    from adkd.methods.efficientad.teacher import load_teacher, read_teacher_file

    state = _pdn_state("s", names)
    torch.save(state, tmp_path / "teacher.pth")
    teacher = PatchDescriptionNetwork("s", 384)
    load_teacher(teacher, read_teacher_file(tmp_path / "teacher.pth"), "teacher.pth", "s")
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), state.values(), strict=True))
    with pytest.raises(BackboneWeightsError, match=r"do not fit EfficientAD's PDN of size 'm'.*method.size=s\|m"):
        load_teacher(PatchDescriptionNetwork("m", 384), state, "teacher.pth", "m")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")  # a pickled module: refused, nothing unpickled
    with pytest.raises(BackboneWeightsError, match="not a torch file of plain tensors"):
        read_teacher_file(tmp_path / "module.pth")


def test_the_teacher_download_is_cached_checked_and_fails_fast_offline(tmp_path, monkeypatch) -> None:
    import time
    import zipfile
    from urllib.error import URLError

    from adkd.errors import BackboneWeightsError
    from adkd.methods.efficientad import teacher

    monkeypatch.setattr(teacher, "CACHE", tmp_path)
    monkeypatch.setenv("ADKD_OFFLINE", "1")
    start = time.monotonic()
    ways = r"(?s)Offline.*distil a teacher offline.*--size m.*teacher_weights=null"
    with pytest.raises(BackboneWeightsError, match=ways):
        teacher.resolve_teacher("download", "m")
    assert time.monotonic() - start < 1.0
    monkeypatch.delenv("ADKD_OFFLINE")
    calls = []

    def no_network(url, path):  # noqa: ANN001, ANN202 - what urlretrieve raises without a network
        calls.append(url)
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(teacher, "urlretrieve", no_network)
    with pytest.raises(BackboneWeightsError, match=r"(?s)Could not download EfficientAD's teacher.*Ways out"):
        teacher.resolve_teacher("download", "s")
    assert calls == [teacher.WEIGHTS_URL]

    def another_file(url, path):  # noqa: ANN001, ANN202 - an archive that is not the published one
        calls.append(url)
        with zipfile.ZipFile(path, "w") as zipped:
            zipped.writestr("efficientad_pretrained_weights/pretrained_teacher_small.pth", b"x")

    monkeypatch.setattr(teacher, "urlretrieve", another_file)
    with pytest.raises(BackboneWeightsError, match="not the published one"):
        teacher.resolve_teacher("download", "s")
    assert not list(tmp_path.rglob("*.pth")) and not list(tmp_path.rglob("*.zip"))  # nothing unchecked is kept
    cached = tmp_path / "efficientad_pretrained_weights" / "pretrained_teacher_small.pth"
    cached.parent.mkdir()
    torch.save(_pdn_state("s", "anomalib"), cached)
    assert list(teacher.resolve_teacher("download", "s")) == list(_pdn_state("s", "anomalib"))  # no second download
    assert len(calls) == 2 and teacher.resolve_teacher(None, "s") is None


def test_penalty_images_are_the_papers_crops_and_bad_folders_say_what_to_do(tmp_path) -> None:
    from PIL import Image

    from adkd.methods.efficientad.images import PenaltyImages, image_folder

    (tmp_path / "imagenet" / "n01").mkdir(parents=True)
    array = torch.zeros(100, 100, 3, dtype=torch.uint8)
    array[20:80, 20:80] = 200  # the centre square: what the crop keeps at twice the size
    Image.fromarray(array.numpy()).save(tmp_path / "imagenet" / "n01" / "a.JPEG", quality=100)
    assert image_folder(str(tmp_path / "imagenet"), "penalty images", "method.penalty_images") == tmp_path / "imagenet"
    crop = PenaltyImages(tmp_path / "imagenet", 32)[0]
    assert crop.shape == (3, 32, 32) and crop.min() > 0.7  # resized to 64 (the square 13 to 51), its centre 16 to 48
    assert image_folder("none", "penalty images", "method.penalty_images") is None
    with pytest.raises(ConfigError, match="method.penalty_images=bundled .*method.penalty_images=none"):
        image_folder(str(tmp_path / "nothing"), "penalty images", "method.penalty_images")


def test_a_teacher_distilled_for_a_few_steps_loads_into_the_method(tmp_path) -> None:
    """The offline command on a folder of two images, 32 px crops (the backbone sees 64 px), three
    steps: the targets lie on the padded PDN's grid, and the file it writes is the teacher of the
    method (whether it learns is the timed run's, README: a few steps on noise learn nothing)."""
    from PIL import Image

    from adkd.cli import main as adkd
    from adkd.methods.efficientad.distill import FeatureTargets
    from adkd.methods.efficientad.teacher import load_teacher, read_teacher_file

    rng = torch.Generator().manual_seed(0)
    for i in range(2):
        Image.fromarray((torch.rand(96, 96, 3, generator=rng) * 255).byte().numpy()).save(tmp_path / f"{i}.png")
    targets = FeatureTargets("mobilenet_v2", 384)
    assert (
        targets(torch.rand(1, 3, 128, 128)).shape
        == PatchDescriptionNetwork("s", 384, padding=True)(torch.rand(1, 3, 64, 64)).shape
        == (1, 384, 16, 16)
    )
    out = tmp_path / "teacher.pth"
    args = [
        "--backbone",
        "mobilenet_v2",
        "--images",
        str(tmp_path),
        "--out",
        str(out),
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--image-size",
        "32",
        "--stat-batches",
        "1",
    ]
    assert adkd(["distill", *args]) == 0
    made = torch.load(out, weights_only=True)
    assert made["backbone"] == "mobilenet_v2" and made["steps"] == 3 and made["images"] == 2
    assert 0.1 < made["first_loss"] < 10  # standardised targets: about 1 + the untrained PDN's own spread
    net = EfficientADNetwork("s")
    load_teacher(net.teacher, read_teacher_file(out), str(out), "s")
    assert torch.equal(net.teacher.layers[0].weight, made["state_dict"]["layers.0.weight"])
