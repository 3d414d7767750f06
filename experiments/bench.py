"""Inference speed of every method side by side, in one process (ratios are what to compare).

python experiments/bench.py [--backbone mobilenet_v2] [--image-size 256] [--batch 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from adkd.methods.adps import ADPS
from adkd.methods.rd4ad import RD4AD
from adkd.methods.stfpm import STFPM

METHODS = {"rd4ad": RD4AD, "stfpm": STFPM, "adps": ADPS}


def time_per_image(model, images: torch.Tensor, repeats: int) -> float:
    model.predict_maps(images)  # warm-up
    if images.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        model.predict_maps(images)
    if images.is_cuda:
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / (repeats * images.shape[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=args.device)
    backbone = {"name": args.backbone, "pretrained": False}
    results = {}
    for name, cls in METHODS.items():
        kwargs = {"image_size": args.image_size} if name == "adps" else {}
        model = cls(backbone=backbone, **kwargs).to(args.device).eval()
        results[name] = time_per_image(model, images, args.repeats)
    base = results["rd4ad"]
    print(
        f"{args.backbone}, {args.image_size} px, batch {args.batch}, {args.device}, {torch.get_num_threads()} threads"
    )
    for name, ms in results.items():
        print(f"  {name:<8} {ms:8.2f} ms/image   x{ms / base:.2f} of rd4ad")


if __name__ == "__main__":
    main()
