"""`adkd serve <run folder or .ckpt>`: a local web app and HTTP endpoint for one trained run.

Open the address it prints (a desktop or a phone): the run's test and validation images with
their scores, decisions and predicted regions (filter by false positive, false negative, defect
type; click one to see it large, with its heat map or region outline); an image threshold slider
(the decision) and a pixel threshold slider (the region) that move the confusion counts,
precision, recall and false-positive rate on both splits, the score histogram, the ROC and PR
curves' operating point and the recall per defect type; "Download CSV": every image's decision
at those thresholds; "Save" keeps both thresholds beside the checkpoint
(``checkpoints/last.threshold.json``; the checkpoint is untouched), and predict, export and
serve use them from then on; new images are scored by dropping them on the page or naming a
folder on this machine; the run's settings.

A line integrates it over HTTP: ``curl -F file=@part.png http://127.0.0.1:8000/predict`` answers
``{"score": ..., "normalized_score": ..., "decision": "normal" | "anomalous", "threshold": ...}``
(``/predict?mask=true``: also the predicted region as a base64 PNG).

The model is loaded once and the run's images scored once, at start. It binds to 127.0.0.1
(this machine only) unless ``--host`` says otherwise. A unified model (``category=all``) is served
one category at a time (``--category``: its thresholds, its images, its saved choice).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adkd.deploy.serve import DEFAULT_MAX_PIXELS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="a run folder (checkpoints/last.ckpt) or a .ckpt")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--engine",
        choices=["torch", "onnx", "openvino"],
        default="torch",
        help="onnx, openvino: the run's export (exported again if stale)",
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "fp16", "int8"],
        default="fp32",
        help="with --engine openvino: the export's precision",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body accepted (MB)")
    parser.add_argument(
        "--max-pixels",
        type=float,
        default=DEFAULT_MAX_PIXELS / 1e6,
        help="largest image decoded, in megapixels (width x height; default %(default)g: an "
        "inspection camera's frame, with room); larger ones get a 413 from their header",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a name, besides this machine's, that the server answers to in the Host header (a "
        "reverse proxy's); repeatable",
    )
    parser.add_argument(
        "--category",
        default=None,
        help="for a unified model (trained with category=all): the category to serve, with its thresholds and images",
    )


def run(args: argparse.Namespace) -> int:
    from adkd.deploy.serve.server import run  # the heavy part, once the arguments are read

    return run(args)
