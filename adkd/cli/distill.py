"""Distil an EfficientAD teacher (a PDN) from any adkd backbone's features, offline.

    adkd distill --backbone mobilenet_v2 --out teacher_s.pth [--images <folder>] [--size s|m]

then train with ``method.teacher_weights=teacher_s.pth``. The method: adkd/methods/efficientad/distill.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backbone", required=True, help="an adkd backbone (conf/backbone/): mobilenet_v2 ships offline"
    )
    parser.add_argument(
        "--images",
        default="bundled",
        help="a folder of images (searched recursively), or 'bundled': scikit-image's (default)",
    )
    parser.add_argument("--out", required=True, type=Path, help="the teacher file to write (.pth)")
    parser.add_argument("--size", choices=("s", "m"), default="s", help="the PDN: EfficientAD-S or -M")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--image-size",
        type=int,
        default=128,
        help="the side of the PDN's training crops (the backbone sees twice it); the PDN is convolutional "
        "(33 px receptive field), so a teacher trained on 128 px crops serves at 256 px",
    )
    parser.add_argument("--stat-batches", type=int, default=8, help="batches the targets' statistics are taken on")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default=None, help="a file of the backbone's weights (else its ImageNet weights)")
    parser.add_argument("--random-backbone", action="store_true", help="no pretrained weights (tests only)")


def run(args: argparse.Namespace) -> int:
    from adkd.methods.efficientad.distill import run  # the heavy part, once the arguments are read

    return run(args)
