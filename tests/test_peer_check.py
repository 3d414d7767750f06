"""The peer check's own machinery (experiments/peer_check_anomalib.py): a comparison with anomalib is
only as fair as the harness that feeds both sides."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_overrides

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def peer():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("peer_check_anomalib", REPO / "experiments/peer_check_anomalib.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_training_passes_give_each_epoch_its_own_order(peer, tiny_mvtec, tmp_path) -> None:  # noqa: ANN001
    """adkd's seeded sampler draws the order from (seed, epoch): a loop that never sets the epoch
    trains every epoch on the first one's batches, as the peer check's anomalib side once did."""
    from hydra.utils import instantiate

    from adkd.training.config import compose

    cfg = compose(tiny_overrides(tiny_mvtec, "method=stfpm", "seed=3"), tmp_path / "run")
    torch.manual_seed(3)
    datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    datamodule.setup()
    loader = datamodule.train_dataloader()
    size = len(loader.dataset)
    passes = peer.training_passes(loader)
    first = [next(passes)["image"] for _ in range(len(loader))]
    second = [next(passes)["image"] for _ in range(len(loader))]
    repeated = list(datamodule.train_dataloader())  # epoch 0 again, as a bare loop gets it
    assert torch.equal(torch.cat(first), torch.cat([b["image"] for b in repeated]))
    assert torch.cat(first).shape[0] == torch.cat(second).shape[0] == size
    assert not torch.equal(torch.cat(first), torch.cat(second))


@pytest.mark.parametrize(("method", "backbone"), [("rd4ad", "resnet18"), ("stfpm", "mobilenet_v2")])
def test_same_init_gives_anomalib_the_student_adkd_starts_from(peer, method, backbone, tmp_path) -> None:  # noqa: ANN001
    """``--same-init``: anomalib's student, given adkd's initial weights layer for layer, computes
    adkd's student features exactly (anomalib on ImageNet-normalised input, as its pre-processor
    hands it)."""
    import lightning as L
    import torchvision
    from hydra.utils import instantiate

    from adkd.backbones.registry import BACKBONES
    from adkd.training.config import compose

    torch.manual_seed(0)
    weights = tmp_path / "teacher.pth"
    if backbone == "resnet18":
        torch.save(torchvision.models.resnet18().state_dict(), weights)
    else:
        weights = BACKBONES[backbone].offline()
    cfg = compose(
        [f"method={method}", f"backbone={backbone}", f"backbone.weights={weights}", "image_size=64"], tmp_path / "run"
    )
    L.seed_everything(1)
    ours = instantiate(cfg.method, _convert_="all").network.eval()
    builder = peer.anomalib_rd4ad if method == "rd4ad" else peer.anomalib_stfpm
    theirs, _, _ = builder(backbone, 64, str(weights))
    images = torch.rand(2, 3, 64, 64)

    def students() -> list[torch.Tensor]:
        theirs.eval()
        theirs.training = True  # both anomalib models return their features, not maps, in training mode
        with torch.no_grad():
            out = theirs(peer.imagenet_normalized(images))[1]
        return list(out.values()) if isinstance(out, dict) else list(out)

    with torch.no_grad():
        expected = ours(images)[1]
    before = students()
    assert max((a - b).abs().max().item() for a, b in zip(expected, before, strict=True)) > 1e-2
    peer.start_from_adkd(method, ours.state_dict(), theirs)
    after = students()
    assert [a.shape for a in after] == [e.shape for e in expected]
    assert max((a - b).abs().max().item() for a, b in zip(expected, after, strict=True)) < 1e-4


def test_teacher_statistics_make_a_random_teacher_normalise_in_eval_mode(peer, tiny_mvtec, tmp_path) -> None:  # noqa: ANN001
    """``--teacher-statistics``: the running statistics become the training images' own, so the frozen
    teacher in eval mode (adkd's) computes what it computes in training mode on those images
    (anomalib's UniNet teacher), where the initial statistics put layer 3 off by a factor of several."""
    import torchvision
    from hydra.utils import instantiate

    from adkd.training.config import compose

    cfg = compose(tiny_overrides(tiny_mvtec, "method=rd4ad", "batch_size=64"), tmp_path / "run")
    torch.manual_seed(0)
    weights = str(tmp_path / "teacher.pth")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    datamodule.setup("fit")
    (batch,) = list(datamodule.train_dataloader())  # every training image in one batch
    images = peer.imagenet_normalized(batch["image"])

    def layer3(train: bool) -> torch.Tensor:
        net = torchvision.models.resnet18(weights=None)
        net.load_state_dict(torch.load(weights, weights_only=True))
        net.train(train)
        body = torch.nn.Sequential(*list(net.children())[:7])  # conv1 ... layer3
        with torch.no_grad():
            return body(images)

    before = layer3(train=False).std() / layer3(train=True).std()
    peer.set_teacher_statistics(weights, "resnet18", cfg)
    assert not 0.5 < before < 2  # the initial statistics normalise nothing (ResNet-18: 0.35x)
    after, batch_statistics = layer3(train=False), layer3(train=True)
    # equal up to the running variance's unbiased estimate (few values a channel at layer 3, 32 px)
    assert 0.95 < after.std() / batch_statistics.std() < 1.05
    assert (after - batch_statistics).abs().mean() < 0.1 * batch_statistics.abs().mean()


def test_anomalib_uninet_under_the_official_recipe(peer, tmp_path) -> None:  # noqa: ANN001
    """``--anomalib-official`` for UniNet: anomalib's network trained as the official code trains it
    (temperature 2, plain AdamW, theta untrained, no classification loss, the source teacher in eval
    mode at every step), against anomalib's own recipe."""
    import torchvision

    torch.manual_seed(0)
    weights = str(tmp_path / "teacher.pth")
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    images = torch.rand(2, 3, 32, 32)
    for official in (False, True):
        model, optimizer, loss_of = peer.anomalib_uninet("resnet50", 32, weights, official=official)
        trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
        theta = {id(p) for p in model.dfs.parameters()}
        assert model.loss.temperature == (2.0 if official else 0.1)
        assert all(group["amsgrad"] is not official for group in optimizer.param_groups)
        assert theta and theta.isdisjoint(trained) is official
        model.train()
        with torch.no_grad():
            loss_of(images)
            with_labels = model(images, masks=torch.zeros(2, 32, 32), labels=torch.zeros(2))
            without = model(images, masks=torch.zeros(2, 32, 32))
        assert model.teachers.source_teacher.training is not official
        assert (with_labels - without).item() > 0.1  # the classification loss anomalib's recipe adds
    # --uninet-departure: the official recipe but for one of anomalib's departures
    model, _, loss_of = peer.anomalib_uninet("resnet50", 32, weights, official=True, departure="teacher-training-mode")
    model.train()
    with torch.no_grad():
        loss_of(images)
    assert model.teachers.source_teacher.training
    model, _, loss_of = peer.anomalib_uninet("resnet50", 32, weights, official=True, departure="classification-loss")
    model.train()
    with torch.no_grad():
        with_bce = loss_of(images)
        without = model(images, masks=torch.zeros(2, 32, 32))
    assert not model.teachers.source_teacher.training
    assert (with_bce - without).item() > 0.1


def test_a_bad_teacher_file_is_refused_before_anything_trains(peer, tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    """``--weights`` is read before adkd's side trains: a bad file ends the check at once, in one
    line that names it, not in a pickle traceback after the first side's run."""
    bad = tmp_path / "teacher.pth"
    bad.write_text("not a checkpoint")
    monkeypatch.setattr(sys, "argv", ["peer_check_anomalib.py", "--method", "rd4ad", "--weights", str(bad)])
    with pytest.raises(SystemExit):
        peer.main()
    assert f"--weights: Cannot read backbone weights {bad}: it is not a torch file" in capsys.readouterr().err
