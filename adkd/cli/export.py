"""`adkd export <run folder or .ckpt> [--format onnx|torchscript|openvino] [--out FILE]`.

Writes a model that takes a batch of resized RGB images in [0, 1] (any batch size) and returns
the smoothed anomaly map, the image score and both normalised around the threshold (0.5), with
the input normalisation, the blur and the thresholds inside. The export ends with a parity check
on test images of the run's own dataset (random images where that is not at hand): the exported
model's maps and scores must match the checkpoint's to ``--tolerance`` (relative to the largest
value; default 1e-4, or the looser ``export_tolerance`` a network declares, with its reason), or the
export fails and prints the differences (the normalised outputs are reported too).

ONNX goes through torch's dynamo exporter (opset 18), which handles DHKD's FFT filter and
normalizing flow and ADPS's patch split; TorchScript through tracing; OpenVINO from the ONNX
export, in fp32, fp16 or int8 (``--precision``; :mod:`adkd.deploy.openvino`).

A unified run (``category=all``) holds a threshold per category, and an export carries one:
``--category`` picks it, and the export goes to ``<run>/export/<category>/``, checked on that
category's test images, with ``category`` in its metadata.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="a run folder (with checkpoints/last.ckpt) or a .ckpt file")
    parser.add_argument(
        "--format",
        choices=["onnx", "torchscript", "openvino"],
        default="onnx",
        help="onnx (default; ONNX Runtime, TensorRT), torchscript (.pt for torch.jit.load), or openvino "
        "(Intel CPUs; --precision)",
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "fp16", "int8"],
        default="fp32",
        help="openvino only: fp32, fp16, or int8 (NNCF, calibrated on the training images and checked "
        "on the test split's AUROC)",
    )
    parser.add_argument("--out", type=Path, default=None, help="default: <run folder>/export/model.onnx|.pt|.xml")
    parser.add_argument(
        "--category",
        default=None,
        help="a unified run's (category=all) category: the thresholds the export carries; "
        "default path <run folder>/export/<category>/",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="largest relative difference accepted (default 1e-4, or the method's own; OpenVINO fp16: 1e-2)",
    )


def run(args: argparse.Namespace) -> int:
    # the heavy part, once the arguments are read
    from adkd.deploy.export import export
    from adkd.deploy.openvino import export_openvino
    from adkd.errors import UserError

    try:
        if args.format == "openvino":
            path, _ = export_openvino(
                args.model, args.precision, args.out, tolerance=args.tolerance, category=args.category
            )
        elif args.precision != "fp32":
            raise UserError(f"--precision {args.precision} is for --format openvino; {args.format} exports fp32.")
        else:
            path, _ = export(args.model, args.format, args.out, args.tolerance, args.category)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "\nInterrupted: the export did not finish (a half-written file is removed); run the command again.",
            file=sys.stderr,
        )
        return 130
    print(f"Written: {path}")
    return 0
