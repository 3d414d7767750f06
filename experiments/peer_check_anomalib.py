"""Peer check: adkd's RD4AD against anomalib's ReverseDistillation on the same data.

Same data (adkd's datamodule), backbone, image size, batch size and epochs for both; each
project's own network, loss, optimizer recipe, anomaly-map smoothing and input normalisation
(adkd's inside its backbone, anomalib's from its pre-processor: ImageNet's); one metric code
(adkd's) scores both. Both teachers get the very same weights: a torchvision ResNet state dict
(ImageNet where --weights names one, else a seeded random init, since no ResNet weights can be
had offline) is loaded into adkd's extractor and anomalib's timm encoder alike. Repeated over
--seeds and averaged.

    python experiments/peer_check_anomalib.py --category brick --epochs 10 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import tempfile

import torch


def imagenet_normalized(images: torch.Tensor) -> torch.Tensor:
    """What anomalib's pre-processor hands its models: adkd's datasets give [0, 1] images (adkd's
    networks normalise inside their backbone), so anomalib's side gets ImageNet's normalisation
    here, as its own pipeline would apply it."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (images - mean) / std


def train_anomalib(dm, backbone: str, image_size: int, epochs: int, weights: str, seed: int) -> dict:
    from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
    from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
    from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel

    from adkd.metrics import AnomalyMetrics

    torch.manual_seed(seed)
    model = ReverseDistillationModel(
        backbone, (image_size, image_size), ["layer1", "layer2", "layer3"], AnomalyMapGenerationMode.ADD, False
    )
    state = torch.load(weights, map_location="cpu", weights_only=True)
    missing, _ = model.encoder.feature_extractor.load_state_dict(state, strict=False)
    assert not missing, f"teacher weights did not fit anomalib's encoder: {missing[:3]}"
    loss_fn = ReverseDistillationLoss()
    params = list(model.decoder.parameters()) + list(model.bottleneck.parameters())
    optimizer = torch.optim.Adam(params, lr=0.005, betas=(0.5, 0.99))  # anomalib's recipe
    for _ in range(epochs):
        model.train()
        for batch in dm.train_dataloader():
            optimizer.zero_grad()
            loss = loss_fn(*model(imagenet_normalized(batch["image"])))
            loss.backward()
            optimizer.step()
    model.eval()
    metrics = AnomalyMetrics(pixel=dm.has_masks)
    with torch.no_grad():
        for batch in dm.test_dataloader():
            out = model(imagenet_normalized(batch["image"]))
            metrics.update(out.pred_score.flatten(), batch["gt_label"], out.anomaly_map, batch["gt_mask"])
    return metrics.compute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="textures")
    parser.add_argument("--category", default="brick")
    parser.add_argument("--backbone", default="resnet18", help="a torchvision ResNet name")
    parser.add_argument("--weights", default=None, help="torchvision state dict for the teacher (default: random)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()

    import torchvision
    from hydra.utils import instantiate

    from adkd.config import compose
    from adkd.run import run

    keys = ("image_auroc", "pixel_auroc", "pixel_aupro")
    ours, theirs = {k: [] for k in keys}, {k: [] for k in keys}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            weights = args.weights
            if weights is None:
                torch.manual_seed(seed)
                weights = f"{tmp}/teacher_{seed}.pth"
                torch.save(getattr(torchvision.models, args.backbone)(weights=None).state_dict(), weights)
            overrides = [
                f"dataset={args.dataset}", f"category={args.category}", f"backbone={args.backbone}",
                f"backbone.weights={weights}", f"image_size={args.image_size}", f"batch_size={args.batch_size}",
                f"max_epochs={args.epochs}", f"seed={seed}", "logger=none", "method=rd4ad",
            ]  # fmt: skip
            cfg = compose(overrides, f"{tmp}/run_{seed}")
            a = run(cfg)["metrics"]
            dm = instantiate(cfg.dataset)
            dm.prepare_data()
            dm.setup()
            b = train_anomalib(dm, args.backbone, args.image_size, args.epochs, weights, seed)
            for k in keys:
                if k in b:
                    ours[k].append(a[k])
                    theirs[k].append(b[k])
            print(f"seed {seed}: image AUROC adkd {a['image_auroc']:.4f} anomalib {b['image_auroc']:.4f}", flush=True)

    teacher = args.weights or "random (seeded, shared)"
    print(f"\n{args.dataset}/{args.category}, {args.backbone} teacher {teacher}, {args.image_size} px, "
          f"{args.epochs} epochs, seeds {args.seeds}")  # fmt: skip
    print(f"{'metric (mean)':<14}{'adkd':>8}{'anomalib':>10}{'diff':>8}")
    mean = {k: (sum(ours[k]) / len(ours[k]), sum(theirs[k]) / len(theirs[k])) for k in keys if ours[k]}
    for k, (x, y) in mean.items():
        print(f"{k:<14}{x:>8.4f}{y:>10.4f}{x - y:>+8.4f}")
    gap = abs(mean["image_auroc"][0] - mean["image_auroc"][1])
    print(f"image AUROC gap: {100 * gap:.1f} points ({'within' if gap <= 0.02 else 'OUTSIDE'} the 2-point bar)")


if __name__ == "__main__":
    main()
