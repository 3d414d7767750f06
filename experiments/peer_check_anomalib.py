"""Peer check: an adkd method against anomalib's implementation of it, on the same data.

Pairs (--method): rd4ad vs ReverseDistillation, stfpm vs Stfpm, patchcore vs Patchcore, uninet vs
UniNet (WRN-50-2 or ResNet-50: anomalib's bottleneck fits their widths only; adkd's target teacher
trains its BatchNorm, as the official code's does; adkd's trained networks are also scored by
anomalib's image score, ``image_auroc_anomalib_score``; ``--anomalib-official`` trains anomalib's
network under the official recipe, ``--uninet-departure`` then puts back one of anomalib's
departures), efficientad vs EfficientAd and draem vs Draem (both below).
Same data (adkd's datamodule), backbone, image size, batch size and epochs for both; each
project's own network, loss, optimizer recipe, anomaly-map smoothing, image score and input
normalisation (adkd's inside its backbone, anomalib's from its pre-processor: ImageNet's); one
metric code (adkd's) scores both. Both backbones get the very same weights, loaded into adkd's
extractor and anomalib's timm extractor alike (anomalib's Stfpm would download its teacher: it is
built without, then given these):

- ``--backbone mobilenet_v2`` (STFPM, PatchCore): torchvision's ImageNet MobileNetV2, the file that
  ships in a package, as timm's ``mobilenetv2_100`` on anomalib's side (the same network, its
  tensors renamed in order); anomalib's ReverseDistillation builds decoders for ResNets only;
- a ResNet: a torchvision state dict, ImageNet where --weights names one, else a seeded random init
  (no ResNet weights can be had offline), so image AUROC then varies by tens of points over seeds.

Repeated over --seeds (the teacher's init too, where it is random). Both sides train in adkd's
loader's orders, epoch by epoch (its seeded sampler, given each epoch as Lightning gives it).
``--same-init`` (RD4AD, STFPM) also starts anomalib's student from adkd's initial weights, copied
layer for layer, so that what remains between the sides is their recipes, not their random draws.

    python experiments/peer_check_anomalib.py --method stfpm --backbone mobilenet_v2 --category brick --seeds 0 1 2

EfficientAD has no backbone: ``--weights`` is the teacher PDN file both sides load (a download, or
``adkd distill``'s), ``--steps`` the training steps at batch 1 (both
sides: Adam 1e-4, weight decay 1e-5, x0.1 at 95%), ``--size`` s or m; the penalty images are the
same loader's for both (``--penalty-images``: a folder or ``bundled``; anomalib's own
transform: twice the size, grey at 0.3, the centre crop). anomalib's side is its ``EfficientAdModel``
with its Lightning module's teacher statistics and validation quantiles (on adkd's validation split).
Its trained networks are also scored by adkd's map (copied into adkd's network: quantiles on the
PDN's own maps, a border of 0; ``*_adkd_map``), which separates the map convention from the training:

    python experiments/peer_check_anomalib.py --method efficientad --weights teacher_s.pth --image-size 256 --steps 300

DRAEM has no backbone either: both sides train their two networks from scratch at the same widths,
by default the official ones (adkd's ``recipe.small`` quarter widths are overridden: 69,048,579 +
28,374,146 parameters on both sides, checked before training; ``--draem-widths 32 16`` gives both
sides the quarter widths, anomalib's as its own network classes built at those widths, for a pair
that a CPU can train), on [0, 1] images (no normalisation on either side), with
the same anomaly source folder (``--anomaly-source``; default: adkd's bundled images, the folder
``synthesis.source: null`` resolves to, given to anomalib's ``Draem`` as its ``dtd_dir``), image
size, batch, epochs (hence steps) and seed. Each side keeps its own recipe; the differences:

- learning rate: Adam 1e-4 over both networks on both sides;
- scheduler: adkd x0.2 at 80% and 90% of the epochs (the official code's); anomalib x0.1 at epochs
  400 and 600 (its ``configure_optimizers``), so never within a run shorter than 400 epochs;
- loss: both L2 + SSIM + focal (gamma 2) with weight 1, but anomalib's focal loss is kornia's
  ``FocalLoss(alpha=1)``, and the kornia installed (0.9) weights class 0 by 1 - alpha: the normal
  pixels carry no segmentation loss at all (the official loss weights both classes by 1, as adkd's
  does); ``--anomalib-official`` gives anomalib's Draem the official weighting (alpha None) and
  leaves the rest of its recipe. SSIM: adkd's zero-pads as the official code does, anomalib's
  (kornia's, doubled back) reflects at the border;
- anomalies: the same generator (anomalib's Perlin one) on half the images, but adkd blends with
  the official 1 - beta in [0.2, 1] (beta ~ U(0, 0.8)), anomalib's ``Draem`` with [0.1, 1]; adkd
  draws them per sample in its loader, anomalib's per batch in its training step;
- initial weights: adkd the official ``weights_init`` (convolutions N(0, 0.02), BatchNorm N(1,
  0.02)), anomalib PyTorch's defaults (``--draem-official-training`` gives anomalib's side the
  official initial weights and rate schedule, leaving it its anomalies and its SSIM);
- image score: anomalib the maximum of the map; adkd its recipe's ``post.score_box``: the official
  maximum of the map's 21x21 local means (``recipe.paper``) or, at ``recipe.small`` (the embedded
  sets), the map's maximum too. The anomalib side also reports its map under the official score
  (``image_auroc_box21``), which separates the networks from the scores.

    python experiments/peer_check_anomalib.py --method draem --category brick --image-size 64 --epochs 1
    python experiments/peer_check_anomalib.py --method draem --draem-widths 32 16 --epochs 30 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
from pathlib import Path

import torch


def imagenet_normalized(images: torch.Tensor) -> torch.Tensor:
    """What anomalib's pre-processor hands its models: adkd's datasets give [0, 1] images (adkd's
    networks normalise inside their backbone), so anomalib's side gets ImageNet's normalisation
    here, as its own pipeline would apply it."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (images - mean) / std


TIMM = {  # adkd backbone -> anomalib's timm name, and adkd's stage numbers as timm's layer names
    "resnet18": ("resnet18", {1: "layer1", 2: "layer2", 3: "layer3"}),
    "resnet50": ("resnet50", {1: "layer1", 2: "layer2", 3: "layer3"}),
    "wide_resnet50_2": ("wide_resnet50_2", {1: "layer1", 2: "layer2", 3: "layer3"}),
    "mobilenet_v2": ("mobilenetv2_100", {1: "blocks.1", 2: "blocks.2", 3: "blocks.4"}),
}


def set_teacher_statistics(weights: str, backbone: str, cfg) -> None:  # noqa: ANN001
    """Give a random teacher's BatchNorm the running statistics of the training images (ImageNet-
    normalised, as both sides feed them), as a pretrained teacher holds its data's statistics.
    Left at their initial values (mean 0, variance 1) they normalise nothing in eval mode, and a
    random ResNet-50's layer-3 features come out about 8x larger than in training mode: a frozen
    teacher in eval mode (adkd's, the official code's) and one back in training mode (anomalib's
    UniNet) then see different networks, which a pretrained teacher would not show."""
    import torchvision
    from hydra.utils import instantiate
    from torch.optim.swa_utils import update_bn

    net = getattr(torchvision.models, backbone)(weights=None)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    datamodule.setup("fit")
    # torch's own: running statistics reset, then a cumulative average over every batch in train mode
    update_bn((imagenet_normalized(batch["image"]) for batch in datamodule.train_dataloader()), net)
    torch.save(net.state_dict(), weights)


def _load_teacher(extractor, weights: str) -> None:  # noqa: ANN001
    """A torchvision state dict into anomalib's timm feature extractor: by name for a ResNet (the
    same key names), in order for MobileNetV2 (the same tensors, named otherwise by timm)."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    target = extractor.state_dict()
    if not set(target) <= set(state):
        ours = [v for k, v in state.items() if not k.startswith("classifier")]
        assert len(ours) >= len(target), "teacher weights do not fit anomalib's extractor"
        assert all(a.shape == b.shape for a, b in zip(ours, target.values(), strict=False)), "tensor shapes differ"
        state = dict(zip(target, ours, strict=False))
    missing, _ = extractor.load_state_dict(state, strict=False)
    assert not missing, f"teacher weights did not fit anomalib's extractor: {missing[:3]}"


def anomalib_rd4ad(backbone: str, image_size: int, weights: str):  # noqa: ANN201
    from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
    from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
    from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel

    name, layers = TIMM[backbone]
    model = ReverseDistillationModel(
        name, (image_size, image_size), [layers[i] for i in (1, 2, 3)], AnomalyMapGenerationMode.ADD, False
    )
    _load_teacher(model.encoder.feature_extractor, weights)
    params = list(model.decoder.parameters()) + list(model.bottleneck.parameters())
    optimizer = torch.optim.Adam(params, lr=0.005, betas=(0.5, 0.99))  # anomalib's recipe
    loss = ReverseDistillationLoss()
    return model, optimizer, lambda images: loss(*model(images))


def anomalib_stfpm(backbone: str, image_size: int, weights: str, official: bool = False):  # noqa: ANN201
    """anomalib's Stfpm; ``official``: with the official code's loss scale and weight decay instead
    of anomalib's (its loss sums over the batch and halves: 0.5 x batch size x the official mean;
    weight decay 1e-3 against 1e-4)."""
    from anomalib.models.image.stfpm import torch_model as stfpm
    from anomalib.models.image.stfpm.loss import STFPMLoss

    original = stfpm.TimmFeatureExtractor  # STFPMModel always asks timm for a pretrained teacher: a download
    stfpm.TimmFeatureExtractor = lambda *a, **kw: original(*a, **{**kw, "pre_trained": False})
    try:
        name, layers = TIMM[backbone]
        model = stfpm.STFPMModel([layers[i] for i in (1, 2, 3)], name)
    finally:
        stfpm.TimmFeatureExtractor = original
    _load_teacher(model.teacher_model.feature_extractor, weights)
    optimizer = torch.optim.SGD(
        model.student_model.parameters(), lr=0.4, momentum=0.9, dampening=0.0, weight_decay=1e-4 if official else 1e-3
    )  # anomalib's recipe
    loss = STFPMLoss()
    scale = (lambda images: 2.0 / len(images)) if official else (lambda images: 1.0)
    return model, optimizer, lambda images: scale(images) * loss(*model(images))


def anomalib_uninet(  # noqa: ANN201
    backbone: str, image_size: int, weights: str, official: bool = False, departure: str | None = None
):
    """anomalib's UniNet with its Lightning module's recipe (AdamW lr 5e-3, amsgrad, eps 1e-10, the
    target teacher at 1e-6, x0.2 at 80% of the epochs; temperature 0.1) and its training step: the
    loss is given the batch's masks (all normal here) and labels, so its classification head's
    BCE is added. Both teachers get ``weights`` (anomalib would download torchvision's).

    ``official``: anomalib's network under the official recipe instead: temperature 2, no
    classification loss, plain AdamW (eps 1e-8, no amsgrad, no schedule: see ``train_anomalib``),
    feature selection's theta left at 1 (untrained), the source teacher in eval mode at every step;
    ``departure`` keeps one of anomalib's: ``classification-loss`` (the BCE on its head) or
    ``teacher-training-mode`` (the source teacher left in training mode, as Lightning's ``train()``
    leaves it)."""
    import torchvision
    from anomalib.models.image.uninet import torch_model as uninet
    from anomalib.models.image.uninet.components import UniNetLoss
    from torchvision.models.feature_extraction import create_feature_extractor

    if backbone not in ("wide_resnet50_2", "resnet50"):
        raise SystemExit("anomalib's UniNet fits layer widths 256/512/1024 only: --backbone wide_resnet50_2")
    original = uninet.Teachers._get_teacher

    def offline(name: str):  # noqa: ANN202
        model = getattr(torchvision.models, name)(weights=None)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return create_feature_extractor(model, return_nodes=["layer3", "layer2", "layer1"])

    uninet.Teachers._get_teacher = staticmethod(offline)
    try:
        model = uninet.UniNetModel(backbone, backbone, UniNetLoss(temperature=2.0 if official else 0.1))
    finally:
        uninet.Teachers._get_teacher = original
    model.teachers.source_teacher.eval()
    optimizer = torch.optim.AdamW(
        [
            {"params": model.student.parameters()},
            {"params": model.bottleneck.parameters()},
            *([] if official else [{"params": model.dfs.parameters()}]),
            {"params": model.teachers.target_teacher.parameters(), "lr": 1e-6},
        ],
        lr=5e-3,
        betas=(0.9, 0.999),
        weight_decay=1e-5,
        **({} if official else {"eps": 1e-10, "amsgrad": True}),
    )

    def loss_of(images: torch.Tensor) -> torch.Tensor:
        normal = torch.zeros(len(images), *images.shape[-2:])
        if official:  # the frozen teacher as the official code keeps it; no labels: no BCE
            if departure != "teacher-training-mode":
                model.teachers.source_teacher.eval()
            labels = torch.zeros(len(images)) if departure == "classification-loss" else None
            return model(images, masks=normal, labels=labels)
        return model(images, masks=normal, labels=torch.zeros(len(images)))

    return model, optimizer, loss_of


def anomalib_patchcore(backbone: str, image_size: int, weights: str):  # noqa: ANN201
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    name, layers = TIMM[backbone]
    model = PatchcoreModel([layers[2], layers[3]], name, pre_trained=False)
    _load_teacher(model.feature_extractor.feature_extractor, weights)
    return model, None, None  # one pass stores the embeddings; the coreset follows


ANOMALIB = {
    "rd4ad": anomalib_rd4ad,
    "stfpm": anomalib_stfpm,
    "patchcore": anomalib_patchcore,
    "uninet": anomalib_uninet,
    "efficientad": None,
    "draem": None,
}


def training_passes(loader):  # noqa: ANN001, ANN201
    """adkd's training loader for ever, each pass in its epoch's order, as Lightning has it (it calls
    ``set_epoch``): adkd's seeded sampler draws the order from (seed, epoch), so a loop that does not
    set the epoch would repeat the first epoch's batches."""
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def start_from_adkd(method: str, state: dict, model: torch.nn.Module) -> None:
    """``--same-init``: anomalib's trainable networks set to adkd's initial ones (``state``: adkd's
    network's state dict as built under the same seed), layer for layer: the same layers in the same
    order, named otherwise. RD4AD: anomalib's bottleneck registers its fusion blocks first and keeps
    the official code's ``conv4``/``bn4``, built but never called; STFPM: adkd's student ends at its
    deepest tapped stage, anomalib's timm student runs on (its later layers keep their own init)."""
    target = model.state_dict()
    if method == "rd4ad":
        ours = [v for k, v in state.items() if k.startswith(("bottleneck.", "student."))]
        unused = ("bottleneck.conv4.", "bottleneck.bn4.", "bottleneck.bn_layer.")
        names = [k for k in target if k.startswith("bottleneck.") and not k.startswith(unused)]
        names += [k for k in target if k.startswith(("bottleneck.bn_layer.", "decoder."))]
    elif method == "stfpm":
        ours = [v for k, v in state.items() if k.startswith("student.")]
        names = [k for k in target if k.startswith("student_model.")][: len(ours)]
    else:
        raise ValueError(f"--same-init: no layer map for {method}")
    assert len(names) == len(ours), f"{len(names)} anomalib tensors against {len(ours)} of adkd's"
    for name, value in zip(names, ours, strict=True):
        assert target[name].shape == value.shape, f"{name}: {tuple(target[name].shape)} vs {tuple(value.shape)}"
    model.load_state_dict(dict(zip(names, ours, strict=True)), strict=False)


class _Batch:
    """adkd's batch (a dict) as anomalib's (attributes), for its Lightning module's helpers."""

    def __init__(self, batch: dict) -> None:
        self.image, self.gt_label = batch["image"], batch["gt_label"]


def train_anomalib_efficientad(dm, size: str, weights: str, steps: int, penalty_images: str, seed: int) -> dict:  # noqa: ANN001
    """anomalib's EfficientAd on adkd's data: its model and losses, its teacher statistics (over the
    training images) and map quantiles (on the validation images), the teacher from ``weights``."""
    from anomalib.models.image.efficient_ad.lightning_model import EfficientAd

    from adkd.methods.efficientad.images import PenaltyImages, endless, image_folder
    from adkd.methods.efficientad.teacher import load_teacher, resolve_teacher
    from adkd.metrics import AnomalyMetrics

    torch.manual_seed(seed)
    module = EfficientAd(model_size="small" if size == "s" else "medium")
    model = module.model
    load_teacher(model.teacher, resolve_teacher(weights, size), weights, size)
    model.mean_std.update(module.teacher_channel_mean_std([_Batch(b) for b in dm.train_dataloader()]))
    folder = image_folder(penalty_images, "penalty images", "--penalty-images")  # anomalib's always has some
    generator = torch.Generator().manual_seed(seed)
    penalty = endless(
        torch.utils.data.DataLoader(
            PenaltyImages(folder, dm.image_size), batch_size=1, shuffle=True, generator=generator
        )
    )
    params = list(model.student.parameters()) + list(model.ae.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, int(0.95 * steps)), gamma=0.1)
    model.train()
    batches = training_passes(dm.train_dataloader())
    for _ in range(steps):
        images = next(batches)["image"]
        loss_st, loss_ae, loss_stae = model(batch=images, batch_imagenet=next(penalty))
        optimizer.zero_grad()
        (loss_st + loss_ae + loss_stae).backward()
        optimizer.step()
        scheduler.step()
    model.eval()
    model.quantiles.update(module.map_norm_quantiles([_Batch(b) for b in dm.val_dataloader()]))
    metrics = AnomalyMetrics(pixel=dm.has_masks)
    with torch.no_grad():
        for batch in dm.test_dataloader():
            out = model(batch["image"])  # normalises inside, as adkd's networks
            metrics.update(out.pred_score.flatten(), batch["gt_label"], out.anomaly_map, batch["gt_mask"])
    results = metrics.compute()
    under = efficientad_under_adkd_map(model, size, dm)
    return {**results, **{f"{k}_adkd_map": under[k] for k in ("image_auroc", "pixel_auroc")}}


@torch.no_grad()
def efficientad_under_adkd_map(model, size: str, dm) -> dict:  # noqa: ANN001
    """anomalib's trained EfficientAd networks (teacher, student, autoencoder and teacher statistics
    copied into adkd's ``EfficientADNetwork``, by order: the same layers) scored by adkd's map: the
    quantiles on the PDN's own maps of the validation images and the 4-pixel border of 0 (the
    official code's). Against anomalib's own numbers this isolates the map convention; against
    adkd's, the training."""
    from adkd.methods.efficientad.network import EfficientADNetwork
    from adkd.metrics import AnomalyMetrics

    net = EfficientADNetwork(size, model.teacher_out_channels, padding=False).eval()
    for ours, theirs in ((net.teacher, model.teacher), (net.student, model.student), (net.ae, model.ae)):
        source, target = theirs.state_dict(), ours.state_dict()
        assert [v.shape for v in source.values()] == [v.shape for v in target.values()]
        ours.load_state_dict(dict(zip(target, source.values(), strict=True)))
    net.teacher_mean.copy_(model.mean_std["mean"])
    net.teacher_std.copy_(model.mean_std["std"])
    st, ae = zip(*(net.raw_maps(b["image"]) for b in dm.val_dataloader()), strict=True)
    net.set_map_quantiles(list(st), list(ae))
    metrics = AnomalyMetrics(pixel=dm.has_masks)
    for batch in dm.test_dataloader():
        maps = net.anomaly_map(batch["image"])
        metrics.update(maps.amax(dim=(1, 2, 3)), batch["gt_label"], maps, batch["gt_mask"])
    return metrics.compute()


@torch.no_grad()
def uninet_under_anomalib_score(run_dir: str) -> float:
    """adkd's trained UniNet (the run's checkpoint) scored by anomalib's image score, its
    ``weighted_decision_mechanism`` on adkd's six pair maps: the maximum of the summed map after a
    5 x 5 blur, where adkd's is the official weighted decision. Against adkd's own image AUROC this
    isolates the score; against anomalib's, the training."""
    from anomalib.models.image.uninet.components import weighted_decision_mechanism
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from adkd.deploy.checkpoints import load_model
    from adkd.methods.components.maps import cosine_distance
    from adkd.metrics import AnomalyMetrics

    model, config = load_model(Path(run_dir))
    dm = instantiate(OmegaConf.create(config["dataset"]))
    dm.prepare_data()
    dm.setup("test")
    metrics = AnomalyMetrics(pixel=False)
    for batch in dm.test_dataloader():
        teachers, students = model.network(batch["image"])
        maps = [cosine_distance(t, s)[:, 0] for t, s in zip(teachers, students, strict=True)]
        scores, _ = weighted_decision_mechanism(len(maps[0]), maps, 0.01, 3e-5, batch["image"].shape[-2:])
        metrics.update(scores.flatten(), batch["gt_label"])
    return float(metrics.compute()["image_auroc"])


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_draem_sizes(model, widths: tuple[int, int]) -> tuple[int, int]:  # noqa: ANN001
    """anomalib's ``DraemModel`` against adkd's ``DRAEMNetwork`` at the same widths: the same
    parameter count in each of the two networks, or an error before any training."""
    from adkd.methods.draem.network import DRAEMNetwork

    with torch.device("meta"):
        ours = DRAEMNetwork(*widths)
    counts = (_count(ours.reconstructive), _count(ours.discriminative))
    theirs = (_count(model.reconstructive_subnetwork), _count(model.discriminative_subnetwork))
    if counts != theirs:
        raise RuntimeError(f"DRAEM's networks differ in size: adkd {counts}, anomalib {theirs} parameters")
    return counts


def train_anomalib_draem(
    dm,
    epochs: int,
    source: str,
    seed: int,
    official: bool = False,  # noqa: ANN001
    widths: tuple[int, int] = (128, 64),
    official_training: bool = False,
) -> dict:
    """anomalib's Draem on adkd's clean training images (``dm`` without synthesis): its anomaly
    generator (on ``source``), networks, loss, optimizer and scheduler (stepped each epoch, as
    Lightning does); ``official``: its focal loss with both classes weighted 1 (alpha None);
    ``widths``: its two networks' base widths (its own classes, built anew where they are not the
    official 128 and 64); ``official_training``: also the official initial weights and rate
    schedule (x0.2 at 80% and 90% of the epochs), so that what remains of anomalib's own is its
    anomalies (blend range, drawn per batch) and its SSIM's border."""
    from anomalib.models.image.draem.lightning_model import Draem
    from anomalib.models.image.draem.torch_model import DiscriminativeSubNetwork, ReconstructiveSubNetwork
    from kornia.losses import FocalLoss

    from adkd.methods.components.postprocess import PostProcessor
    from adkd.metrics import AnomalyMetrics

    torch.manual_seed(seed)
    module = Draem(dtd_dir=source)  # the folder exists: nothing is downloaded
    model = module.model
    if widths != (128, 64):  # before configure_optimizers, which collects the parameters
        model.reconstructive_subnetwork = ReconstructiveSubNetwork(base_width=widths[0])
        model.discriminative_subnetwork = DiscriminativeSubNetwork(in_channels=6, out_channels=2, base_width=widths[1])
    reconstructive, discriminative = check_draem_sizes(model, widths)
    print(f"DRAEM parameters, both sides: reconstructive {reconstructive:,}, discriminative {discriminative:,}")
    if official:
        module.loss.focal_loss = FocalLoss(alpha=None, gamma=2.0, reduction="mean")
    (optimizer,), (scheduler,) = module.configure_optimizers()
    if official_training:
        from adkd.methods.base import multistep_at_fractions
        from adkd.methods.draem.network import official_init

        model.apply(official_init)
        scheduler = multistep_at_fractions(optimizer, epochs, [0.8, 0.9], 0.2)
    for epoch in range(epochs):
        model.train()
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            images = batch["image"]
            augmented, masks = module.augmenter(images)
            reconstruction, prediction = model(augmented)
            optimizer.zero_grad()
            module.loss(images, reconstruction, masks, prediction).backward()
            optimizer.step()
        scheduler.step()
    model.eval()
    metrics, box = AnomalyMetrics(pixel=dm.has_masks), AnomalyMetrics(pixel=False)
    official = PostProcessor(map_sigma=0.0, score_sigma=0.0, score_box=21)  # the official DRAEM score
    with torch.no_grad():
        for batch in dm.test_dataloader():
            out = model(batch["image"])
            maps = out.anomaly_map.unsqueeze(1)  # (B,H,W): the anomaly class's softmax
            metrics.update(out.pred_score.flatten(), batch["gt_label"], maps, batch["gt_mask"])
            box.update(official(maps)[1], batch["gt_label"])
    return {**metrics.compute(), "image_auroc_box21": box.compute()["image_auroc"]}


def train_anomalib(
    method: str,
    dm,
    backbone: str,
    image_size: int,
    epochs: int,
    weights: str,
    seed: int,  # noqa: ANN001
    official: bool = False,
    init: dict | None = None,
    departure: str | None = None,
) -> dict:
    """anomalib's network, loss and optimiser on adkd's data, epoch by epoch in adkd's orders;
    ``init``: adkd's initial network (``--same-init``), copied into anomalib's before training;
    ``departure``: UniNet under the official recipe but for one of anomalib's departures."""
    from adkd.metrics import AnomalyMetrics

    torch.manual_seed(seed)
    model, optimizer, loss_of = ANOMALIB[method](
        backbone,
        image_size,
        weights,
        **({"official": True} if official else {}),
        **({"departure": departure} if departure else {}),
    )
    if init is not None:
        start_from_adkd(method, init, model)
    loader = dm.train_dataloader()
    schedule = None
    if method == "uninet" and not official:  # anomalib's UniNet: x0.2 at 80% of the epochs, stepped once an epoch
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [int(epochs * 0.8)], gamma=0.2)
    for epoch in range(1 if optimizer is None else epochs):
        model.train()
        loader.sampler.set_epoch(epoch)  # as Lightning does; else every epoch would repeat the first's order
        for batch in loader:
            if optimizer is None:
                with torch.no_grad():
                    model(imagenet_normalized(batch["image"]))
                continue
            optimizer.zero_grad()
            loss_of(imagenet_normalized(batch["image"])).backward()
            optimizer.step()
        if schedule is not None:
            schedule.step()
    if optimizer is None:
        model.subsample_embedding(0.1)  # anomalib's default coreset_sampling_ratio
    model.eval()
    metrics = AnomalyMetrics(pixel=dm.has_masks)
    with torch.no_grad():
        for batch in dm.test_dataloader():
            out = model(imagenet_normalized(batch["image"]))
            maps = out.anomaly_map if out.anomaly_map.dim() == 4 else out.anomaly_map.unsqueeze(1)  # UniNet's: (B,H,W)
            metrics.update(out.pred_score.flatten(), batch["gt_label"], maps, batch["gt_mask"])
    return metrics.compute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="rd4ad", choices=sorted(ANOMALIB))
    parser.add_argument("--dataset", default="textures")
    parser.add_argument("--category", default="brick")
    parser.add_argument("--backbone", default="resnet18", choices=sorted(TIMM))
    parser.add_argument("--weights", default=None, help="torchvision state dict for the teacher (default: random)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--teacher-statistics",
        action="store_true",
        help="a random ResNet teacher gets its BatchNorm running statistics from the training images "
        "before both sides load it (as a pretrained one holds its data's)",
    )
    parser.add_argument(
        "--limit-train",
        type=int,
        default=None,
        help="train both sides on N training images spread over the split (dataset.limit_train)",
    )
    parser.add_argument("--adkd-only", action="store_true", help="train adkd's side only (anomalib's measured before)")
    parser.add_argument("--anomalib-only", action="store_true", help="train anomalib's side only")
    parser.add_argument(
        "--keep-runs",
        default=None,
        metavar="DIR",
        help="keep adkd's run folders (metrics.json with every metric, the checkpoint) under "
        "DIR/run_<seed> (default: a temporary folder, removed at the end)",
    )
    official = (
        "stfpm: anomalib's Stfpm with the official code's loss scale and weight decay; draem: anomalib's "
        "Draem with the official focal loss (both classes weighted 1); uninet: anomalib's UniNet network "
        "under the official recipe (temperature 2, no classification loss, plain AdamW without a "
        "schedule, theta untrained, the source teacher in eval mode)"
    )
    parser.add_argument("--anomalib-official", action="store_true", help=official)
    parser.add_argument(
        "--uninet-departure",
        choices=("classification-loss", "teacher-training-mode"),
        default=None,
        help="uninet, with --anomalib-official: keep this one of anomalib's departures from the official "
        "recipe (its classification loss, or its source teacher left in training mode)",
    )
    parser.add_argument(
        "--draem-official-training",
        action="store_true",
        help="draem: anomalib's Draem also starts from the official initial weights and steps its "
        "rate x0.2 at 80%% and 90%% of the epochs (the official schedule)",
    )
    parser.add_argument(
        "--same-init",
        action="store_true",
        help="rd4ad, stfpm: anomalib's student starts from adkd's initial weights (as adkd builds "
        "them under the seed), so the two sides differ only in their recipes",
    )
    parser.add_argument("--steps", type=int, default=300, help="efficientad: training steps at batch 1")
    parser.add_argument("--size", choices=("s", "m"), default="s", help="efficientad: the PDN")
    parser.add_argument("--penalty-images", default="bundled", help="efficientad: a folder, or bundled")
    parser.add_argument(
        "--anomaly-source",
        default=None,
        help="draem: the folder of texture images both sides fill anomalies from (default: adkd's "
        "bundled images, synthesis.source=null's)",
    )
    parser.add_argument(
        "--draem-widths",
        type=int,
        nargs=2,
        default=[128, 64],
        metavar=("RECONSTRUCTIVE", "DISCRIMINATIVE"),
        help="draem: both sides' base widths (official: 128 64; adkd's recipe.small: 32 16, for a pair "
        "a CPU can train)",
    )
    args = parser.parse_args()
    if args.method == "efficientad" and not args.weights:
        parser.error("--method efficientad needs --weights: the teacher PDN file (or 'download')")
    if args.same_init and args.method not in ("rd4ad", "stfpm"):
        parser.error("--same-init: rd4ad and stfpm only")
    if args.draem_official_training and args.method != "draem":
        parser.error("--draem-official-training: draem only")
    if args.uninet_departure and not (args.method == "uninet" and args.anomalib_official):
        parser.error("--uninet-departure: uninet with --anomalib-official only")
    if args.keep_runs and os.path.exists(args.keep_runs) and not os.path.isdir(args.keep_runs):
        parser.error(f"--keep-runs {args.keep_runs}: a file, not a folder; name a folder (it is created if missing)")
    # A backbone file is read now, not after adkd's side has trained. EfficientAD's --weights is its
    # teacher PDN, which adkd's run reads before its first step; DRAEM has no backbone.
    if args.weights and args.method not in ("efficientad", "draem"):
        from adkd.backbones.registry import BACKBONES
        from adkd.backbones.weights import resolve_state_dict
        from adkd.errors import BackboneWeightsError

        try:
            resolve_state_dict(args.backbone, BACKBONES[args.backbone], args.weights)
        except BackboneWeightsError as err:
            parser.error(f"--weights: {err}")
    if args.method == "efficientad" and args.penalty_images == "none":
        parser.error("--penalty-images none: anomalib's EfficientAd always takes penalty images")

    import torchvision

    from adkd.training.config import compose
    from adkd.training.run import run

    if args.method == "draem":
        from adkd.data.synthesis import bundled_anomaly_source

        args.anomaly_source = str(args.anomaly_source or bundled_anomaly_source())
    keys = ("image_auroc", "pixel_auroc", "pixel_aupro")
    ours, theirs = {k: [] for k in keys}, {k: [] for k in keys}
    box = []  # draem: anomalib's map under the official 21x21 image score
    under = []  # efficientad: anomalib's trained networks under adkd's map (image, pixel AUROC)
    rescored = []  # uninet: adkd's trained networks under anomalib's image score (image AUROC)
    if args.keep_runs:
        os.makedirs(args.keep_runs, exist_ok=True)
    # --teacher-statistics applies to a random ResNet teacher only (given or ImageNet weights hold theirs)
    calibrate = args.teacher_statistics and not args.weights and args.backbone != "mobilenet_v2"
    kept = contextlib.nullcontext(args.keep_runs) if args.keep_runs else tempfile.TemporaryDirectory()
    with kept as tmp:
        for seed in args.seeds:
            weights = args.weights
            if args.method == "draem":  # no backbone: both sides train from scratch
                weights = None
            elif weights is None and args.backbone == "mobilenet_v2":
                from adkd.backbones.registry import BACKBONES

                weights = BACKBONES["mobilenet_v2"].offline()  # ImageNet, shipped in a package
            elif weights is None:
                torch.manual_seed(seed)
                weights = f"{tmp}/teacher_{seed}.pth"
                torch.save(getattr(torchvision.models, args.backbone)(weights=None).state_dict(), weights)
            overrides = [
                f"dataset={args.dataset}",
                f"category={args.category}",
                f"backbone={args.backbone}",
                f"backbone.weights={weights}",
                f"image_size={args.image_size}",
                f"batch_size={args.batch_size}",
                f"max_epochs={args.epochs}",
                f"seed={seed}",
                "logger=none",
                f"method={args.method}",
                "num_figures=0",
                *([f"dataset.limit_train={args.limit_train}"] if args.limit_train else []),
            ]
            if args.method == "uninet":  # the official code's: the target teacher's BatchNorm trains
                overrides.append("method.network.target_batch_statistics=true")
            if args.method == "efficientad":  # no backbone; the teacher file, the steps at batch 1
                overrides = [o for o in overrides if not o.startswith("backbone.weights=")]
                overrides += [
                    f"method.teacher_weights={weights}",
                    f"method.steps={args.steps}",
                    "batch_size=1",
                    "max_epochs=70000",
                    f"method.size={args.size}",
                    f"method.penalty_images={args.penalty_images}",
                ]
            if args.method == "draem":  # the same widths (official by default), the shared anomaly source
                overrides = [o for o in overrides if not o.startswith(("backbone=", "backbone.weights="))]
                overrides += [
                    f"method.network.reconstructive_width={args.draem_widths[0]}",
                    f"method.network.discriminative_width={args.draem_widths[1]}",
                    f"synthesis.source={args.anomaly_source}",
                ]
            cfg = compose(overrides, f"{tmp}/run_{seed}")
            if calibrate:
                set_teacher_statistics(weights, args.backbone, cfg)
            if not args.anomalib_only:
                a = run(cfg)["metrics"]
                if args.method == "uninet":
                    a["image_auroc_anomalib_score"] = uninet_under_anomalib_score(f"{tmp}/run_{seed}")
                    rescored.append(a["image_auroc_anomalib_score"])
            if args.adkd_only or args.anomalib_only:  # one side: its numbers, no comparison
                side, m = ("adkd", a) if args.adkd_only else ("anomalib", _anomalib(args, cfg, weights, seed))
                extra = (
                    "image_auroc_box21",
                    "image_auroc_adkd_map",
                    "pixel_auroc_adkd_map",
                    "image_auroc_anomalib_score",
                )
                shown = [k for k in (*keys, *extra) if m.get(k) is not None]
                print(f"seed {seed}: " + "; ".join(f"{k} {side} {m[k]:.4f}" for k in shown), flush=True)
                continue
            b = _anomalib(args, cfg, weights, seed)
            for k in keys:
                if k in b:
                    ours[k].append(a[k])
                    theirs[k].append(b[k])
            shown = "; ".join(f"{k} adkd {a[k]:.4f} anomalib {b[k]:.4f}" for k in keys if k in b)
            if rescored:
                shown += f"; adkd's networks under anomalib's image score: image_auroc {rescored[-1]:.4f}"
            if "image_auroc_box21" in b:
                box.append(b["image_auroc_box21"])
                shown += f"; anomalib's map under the official 21x21 score: image_auroc {box[-1]:.4f}"
            if "pixel_auroc_adkd_map" in b:
                under.append((b["image_auroc_adkd_map"], b["pixel_auroc_adkd_map"]))
                shown += (
                    f"; anomalib's networks under adkd's map: image_auroc {under[-1][0]:.4f} "
                    f"pixel_auroc {under[-1][1]:.4f}"
                )
            print(f"seed {seed}: {shown}", flush=True)

    teacher = args.weights or ("ImageNet (shared)" if args.backbone == "mobilenet_v2" else "random (seeded, shared)")
    if calibrate:
        teacher += ", BatchNorm statistics from the training images"
    network = (
        f"from scratch at widths {args.draem_widths}, anomalies from {args.anomaly_source}"
        if args.method == "draem"
        else f"{args.backbone} weights {teacher}"
    )
    print(
        f"\n{args.method} vs anomalib on {args.dataset}/{args.category}, {network}, "
        f"{args.image_size} px, "
        + (f"{args.steps} steps" if args.method == "efficientad" else f"{args.epochs} epochs")
        + f", seeds {args.seeds}"
    )
    print(f"{'metric':<14}{'adkd':>16}{'anomalib':>16}{'diff':>8}")
    for k in (k for k in keys if ours[k]):
        x, y = ours[k], theirs[k]
        print(f"{k:<14}{_mean_spread(x):>16}{_mean_spread(y):>16}{statistics.mean(x) - statistics.mean(y):>+8.4f}")
    if box:
        print(f"image_auroc of anomalib's map under the official 21x21 score: {_mean_spread(box)}")
    if rescored:
        print(f"image_auroc of adkd's networks under anomalib's image score: {_mean_spread(rescored)}")
    if under:
        print(
            f"anomalib's networks under adkd's map: image_auroc {_mean_spread([u[0] for u in under])}, "
            f"pixel_auroc {_mean_spread([u[1] for u in under])}"
        )
    for k in ("image_auroc", "pixel_auroc"):
        if ours[k]:
            gap = abs(statistics.mean(ours[k]) - statistics.mean(theirs[k]))
            print(f"{k} gap: {100 * gap:.1f} points ({'within' if gap <= 0.02 else 'OUTSIDE'} the 2-point bar)")


def _anomalib(args: argparse.Namespace, cfg, weights: str, seed: int) -> dict:  # noqa: ANN001
    from hydra.utils import instantiate

    dm = instantiate(cfg.dataset)
    dm.prepare_data()
    dm.setup()
    if args.method == "efficientad":
        return train_anomalib_efficientad(dm, args.size, weights, args.steps, args.penalty_images, seed)
    if args.method == "draem":  # anomalib's Draem makes its own anomalies: adkd's loaders give clean images
        dm = instantiate(cfg.dataset, synthesis=None)
        dm.prepare_data()
        dm.setup()
        return train_anomalib_draem(
            dm,
            args.epochs,
            args.anomaly_source,
            seed,
            args.anomalib_official,
            tuple(args.draem_widths),
            args.draem_official_training,
        )
    init = None
    if args.same_init:  # adkd's network as adkd.run builds it under this seed, before any training
        import lightning as L

        L.seed_everything(seed)
        init = instantiate(cfg.method, _convert_="all").network.state_dict()
    return train_anomalib(
        args.method,
        dm,
        args.backbone,
        args.image_size,
        args.epochs,
        weights,
        seed,
        args.anomalib_official,
        init,
        args.uninet_departure,
    )


def _mean_spread(values: list[float]) -> str:
    """mean +- (max - min) / 2 over the seeds."""
    return f"{statistics.mean(values):.4f}+-{(max(values) - min(values)) / 2:.4f}"


if __name__ == "__main__":
    from adkd.errors import user_error_in
    from adkd.training.run import RunInterrupted

    try:
        main()
    except (KeyboardInterrupt, RunInterrupted):  # a seed's comparison is all or nothing: nothing to resume
        raise SystemExit(
            "\nInterrupted: the peer check keeps no partial comparison; the seeds printed above are "
            "complete. Run it again with the remaining --seeds."
        ) from None
    except Exception as err:  # a bad --weights file, a missing dataset: its message, as adkd.run prints it
        if (user := user_error_in(err)) is None:
            raise
        raise SystemExit(f"Error: {user}") from None
