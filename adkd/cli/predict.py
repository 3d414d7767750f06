"""`adkd predict <run folder or .ckpt> <image | folder | glob> ...`: score new images.

Needs nothing but the checkpoint: it carries the resolved config (method, backbone, image size),
the weights, and the thresholds set after training. Writes into ``--out``:

- ``predictions.csv``: image_path, pred_score, normalized_score (0.5 = the threshold), pred_label
  (1 = anomalous), decision, image_threshold;
- ``figures/``: per image, the image | its anomaly map (normalised, with a colour bar) | the
  predicted region, with the score and the decision in the title (``--no-figures`` to skip);
- ``masks/`` with ``--masks``: the predicted region as a binary PNG at the image's own size.

A folder is searched recursively; files that cannot be read are listed and skipped.

A unified model (trained with ``category=all``) holds a threshold per category: ``--category``
says which category the images are of, and picks its thresholds; without it, predict refuses and
lists the categories.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adkd.cli.common import not_negative, positive


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="a run folder, a .ckpt, or an .onnx or .xml export")
    parser.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output folder (default: ./predictions)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch", type=positive, default=8, help="images per forward pass (1 or more)")
    parser.add_argument("--workers", type=not_negative, default=0, help="data loader processes")
    parser.add_argument(
        "--engine",
        choices=["torch", "onnx", "openvino"],
        default="torch",
        help="onnx: the run's export/model.onnx under ONNX Runtime; openvino: its OpenVINO IR on the CPU (either "
        "exported again if missing or older than the checkpoint)",
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "fp16", "int8"],
        default="fp32",
        help="with --engine openvino: the export's precision",
    )
    parser.add_argument("--threshold", type=float, default=None, help="image threshold, in the method's score units")
    parser.add_argument(
        "--category",
        default=None,
        help="the images' category, for a unified model (trained with category=all): its thresholds are used",
    )
    parser.add_argument("--masks", action="store_true", help="also write the predicted regions as binary PNGs")
    parser.add_argument("--no-figures", dest="figures", action="store_false", help="skip the overlay figures")


def run(args: argparse.Namespace) -> int:
    from adkd.deploy.predict import run  # the heavy part, once the arguments are read

    return run(args)
