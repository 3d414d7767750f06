"""Inference speed of every method side by side, in one process (ratios are what to compare).

python experiments/bench.py [--backbone mobilenet_v2] [--image-size 256] [--batch 8] [--rounds 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from adkd.methods.adps import ADPS
from adkd.methods.dhkd import DHKD
from adkd.methods.rd4ad import RD4AD
from adkd.methods.stfpm import STFPM

METHODS = {"rd4ad": RD4AD, "stfpm": STFPM, "adps": ADPS, "dhkd": DHKD}


def time_once(model, images: torch.Tensor) -> float:
    if images.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.predict_maps(images)
    if images.is_cuda:
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / images.shape[0]


def interleaved_medians(models: dict, images: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median ms/image per model, the models taking turns each round, so that a slow spell of a
    noisy machine hits all of them alike."""
    for model in models.values():
        model.predict_maps(images)  # warm-up
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name].append(time_once(model, images))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=args.device)
    backbone = {"name": args.backbone, "pretrained": False}
    models = {}
    for name, cls in METHODS.items():
        kwargs = {"image_size": args.image_size} if name in ("adps", "dhkd") else {}
        models[name] = cls(backbone=backbone, **kwargs).to(args.device).prepare_for_inference()
    results = interleaved_medians(models, images, args.rounds)
    base = results["rd4ad"]
    print(
        f"{args.backbone}, {args.image_size} px, batch {args.batch}, {args.device}, {torch.get_num_threads()} threads"
    )
    for name, ms in results.items():
        print(f"  {name:<8} {ms:8.2f} ms/image   x{ms / base:.2f} of rd4ad")


if __name__ == "__main__":
    main()
