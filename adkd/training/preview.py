"""`adkd preview method=adps [dataset=... category=...]`: a grid of what a
method that trains on synthetic anomalies sees: training images, the same with anomalies, masks.
Same config and seed as `adkd.run`, so it shows exactly the first training draws."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from adkd.data.synthesis import AnomalySynthesizer
from adkd.data.unified import datamodule as build_datamodule
from adkd.training.config import CONF_DIR


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="run")
def main(cfg: DictConfig) -> None:
    import torch
    from torchvision.utils import save_image

    if not cfg.get("synthesis"):
        print(f"error: method {cfg.method_name} trains on no synthetic anomalies (try method=adps)", file=sys.stderr)
        sys.exit(1)
    torch.manual_seed(cfg.seed)
    datamodule = build_datamodule(cfg.dataset, synthesis=None)  # the images as they are, for the first row
    datamodule.prepare_data()
    datamodule.setup("fit")
    n = min(8, len(datamodule.train_set))
    images = torch.stack([datamodule.train_set[i]["image"] for i in range(n)])
    synthesizer = AnomalySynthesizer(**cfg.synthesis)
    augmented, masks = synthesizer(images)
    rows = torch.cat([images, augmented, masks.expand(-1, 3, -1, -1)])  # three rows of n
    path = Path(cfg.output_dir) / "synthetic_samples.png"
    save_image(rows, path, nrow=n, padding=2, pad_value=1.0)
    print(f"Rows: training images | with synthetic anomalies | masks (source: {synthesizer.source})\nWritten: {path}")


if __name__ == "__main__":
    main()
