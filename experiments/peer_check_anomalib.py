"""Peer check: adkd's RD4AD against anomalib's ReverseDistillation on the same data.

Same data (adkd's datamodule), backbone, image size, batch size and epochs for both; each
project's own network, loss, optimizer recipe and anomaly-map smoothing; one metric code
(adkd's) scores both. anomalib's timm encoder cannot fetch hub weights offline, so by default
both teachers start from random init (pass --pretrained where the hub is reachable).

    python experiments/peer_check_anomalib.py --category brick --epochs 10
"""

from __future__ import annotations

import argparse
import tempfile

import torch


def train_anomalib(dm, backbone: str, image_size: int, epochs: int, pretrained: bool, seed: int) -> dict:
    from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
    from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
    from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel

    from adkd.metrics import AnomalyMetrics

    torch.manual_seed(seed)
    model = ReverseDistillationModel(
        backbone, (image_size, image_size), ["layer1", "layer2", "layer3"], AnomalyMapGenerationMode.ADD, pretrained
    )
    loss_fn = ReverseDistillationLoss()
    params = list(model.decoder.parameters()) + list(model.bottleneck.parameters())
    optimizer = torch.optim.Adam(params, lr=0.005, betas=(0.5, 0.99))  # anomalib's recipe
    for _ in range(epochs):
        model.train()
        for batch in dm.train_dataloader():
            optimizer.zero_grad()
            loss = loss_fn(*model(batch["image"]))
            loss.backward()
            optimizer.step()
    model.eval()
    metrics = AnomalyMetrics(pixel=dm.has_masks)
    with torch.no_grad():
        for batch in dm.test_dataloader():
            out = model(batch["image"])
            metrics.update(out.pred_score.flatten(), batch["gt_label"], out.anomaly_map, batch["gt_mask"])
    return metrics.compute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="textures")
    parser.add_argument("--category", default="brick")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--pretrained", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from hydra.utils import instantiate

    from adkd.config import compose
    from adkd.run import run

    overrides = [
        f"dataset={args.dataset}", f"category={args.category}", f"backbone={args.backbone}",
        f"backbone.pretrained={args.pretrained}", f"image_size={args.image_size}",
        f"batch_size={args.batch_size}", f"max_epochs={args.epochs}", f"seed={args.seed}", "logger=none",
        "method=rd4ad",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(overrides, tmp)
        ours = run(cfg)["metrics"]
        dm = instantiate(cfg.dataset)
        dm.setup()
        theirs = train_anomalib(dm, args.backbone, args.image_size, args.epochs, args.pretrained, args.seed)
    print(f"\n{args.dataset}/{args.category}, {args.backbone} (pretrained={args.pretrained}), "
          f"{args.image_size} px, {args.epochs} epochs")  # fmt: skip
    print(f"{'metric':<14}{'adkd':>8}{'anomalib':>10}{'diff':>8}")
    for k in ("image_auroc", "pixel_auroc", "pixel_aupro"):
        if k in theirs:
            print(f"{k:<14}{ours[k]:>8.4f}{theirs[k]:>10.4f}{ours[k] - theirs[k]:>+8.4f}")
    gap = abs(ours["image_auroc"] - theirs["image_auroc"])
    print(f"image AUROC gap: {100 * gap:.1f} points ({'within' if gap <= 0.02 else 'OUTSIDE'} the 2-point bar)")


if __name__ == "__main__":
    main()
