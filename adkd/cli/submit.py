"""`adkd submit --out <folder> <run> [<run> ...]`: the anomaly maps of MVTec AD
2's private test sets, in the form MVTec's evaluation server (https://benchmark.mvtec.com/) takes.

The labels of ``test_private`` and ``test_private_mixed`` are not published; the server scores maps
uploaded as one ``.tar.gz`` of this folder (what MVTec's checker, ``check_and_prepare_data_for_upload.py``
in the dataset's public code, verifies before it packs one):

  <out>/anomaly_images/<category>/<test_private|test_private_mixed>/<image stem>.tiff
      the anomaly map: one channel, float16, higher = more anomalous (threshold-free metrics)
  <out>/anomaly_images_thresholded/<category>/<test_private|test_private_mixed>/<image stem>.png
      the segmentation: one channel, 0 normal, 255 anomalous (optional for the server; its
      threshold-dependent metrics need it)

with all 8 categories, one file per test image in each folder (``000_regular``..., ``000_mixed``...)
and nothing else. Give one finished MVTec AD 2 run per category (several calls may fill one folder),
or a unified run (``category=all``), which writes each of its categories with that category's thresholds;
``--archive`` packs the folder once it is complete, named and laid out as MVTec's checker packs it.

Each map is the run's smoothed map resized (bilinear) to its image's own size, in units of the run's
pixel threshold (:meth:`~adkd.methods.components.postprocess.PostProcessor.in_threshold_units`: 0 at the lowest
normal validation value, 1 at the threshold), a monotone rescaling that leaves the threshold-free
metrics as they are and keeps float16's precision near the threshold; the segmentation is the map
above 1. TIFFs are zlib-compressed by default (full-size float16 maps take gigabytes; tifffile,
which MVTec's checker reads them with, reads them); ``--compression none`` writes them plain.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adkd.cli.common import positive


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="+", type=Path, help="finished MVTec AD 2 runs, one per category, or a unified one (category=all)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the submission folder (created, or added to)")
    parser.add_argument("--root", type=Path, default=None, help="MVTec AD 2's folder (default: the run's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch", type=positive, default=8, help="images per forward pass")
    parser.add_argument("--compression", choices=["zlib", "none"], default="zlib", help="of the float16 TIFFs")
    parser.add_argument("--archive", action="store_true", help="pack <out>.tar.gz once all 8 categories are there")


def run(args: argparse.Namespace) -> int:
    from adkd.deploy.submission import run  # the heavy part, once the arguments are read

    return run(args)
