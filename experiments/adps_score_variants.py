"""ADPS's image score, compared on a trained run: the paper's max(G(M)) of the post-segmentation
map M against scores of the coarse map (1 - W_i summed over scales, what ADPS distils into), each
as the max or the mean of the top 1% of the (Gaussian-smoothed) map. Scores the dataset's labelled
validation split (choose here: ELPV's real defects) and, with --test, the test split too.

    python experiments/adps_score_variants.py <adps run folder> [--test]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def variants(model, images: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: ANN001
    from adkd.methods.components.postprocess import PostProcessor

    net = model.network
    psm = net.psm
    maps = {"psm": net.anomaly_map(images)}
    net.psm = None  # the network's own fallback: the coarse masks 1 - W_i, summed
    try:
        maps["coarse"] = net.anomaly_map(images)
    finally:
        net.psm = psm
    scores = {}
    for name, raw in maps.items():
        for score in ("max", "topk"):
            scores[f"{name} {score}"] = PostProcessor(map_sigma=4.0, score=score)(raw)[1]
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--test", action="store_true", help="also score the test split")
    args = parser.parse_args()

    from hydra.utils import instantiate
    from sklearn.metrics import roc_auc_score  # the scores as they are (torchmetrics would squash them)

    from adkd.deploy.checkpoints import load_model
    from adkd.deploy.trust import dataset_config

    model, config = load_model(args.run)
    dm = instantiate(dataset_config(config, args.run))
    records = dm.checked_records()
    splits = {"validation": dm.calibration_dataloader()}
    if args.test:
        dm.setup("test")
        splits["test"] = dm.test_dataloader()
    for split, loader in splits.items():
        if split == "validation" and not any(r.gt_label for r in records["calibration"]):
            continue
        scores, labels = {}, []
        with torch.no_grad():
            for batch in loader:
                for name, value in variants(model, batch["image"]).items():
                    scores.setdefault(name, []).append(value)
                labels.append(batch["gt_label"])
        labels = torch.cat(labels)
        shown = ", ".join(f"{k} {100 * roc_auc_score(labels, torch.cat(v)):.1f}" for k, v in scores.items())
        print(f"{split} image AUROC ({len(labels)} images): {shown}")


if __name__ == "__main__":
    main()
