"""`python -m adkd.serve <run folder or .ckpt>`: a local web app and HTTP endpoint for one trained run.

Open the address it prints: the run's test and validation images with their maps, scores and
decisions (filter by false positive, false negative, defect type); a threshold slider that moves
the confusion counts, precision, recall and false-positive rate on both splits beside the score
histogram; "Save" keeps the chosen threshold beside the checkpoint
(``checkpoints/last.threshold.json``; the checkpoint is untouched), and predict, export and
serve use it from then on; new images are scored by dropping them on the page or naming a folder
on this machine.

A line integrates it over HTTP: ``curl -F file=@part.png http://127.0.0.1:8000/predict`` answers
``{"score": ..., "normalized_score": ..., "decision": "normal" | "anomalous", "threshold": ...}``
(``/predict?mask=true``: also the predicted region as a base64 PNG).

The model is loaded once and the run's images scored once, at start. It binds to 127.0.0.1
(this machine only) unless ``--host`` says otherwise. A unified model (``category=all``) is served
one category at a time (``--category``: its thresholds, its images, its saved choice).
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from adkd.errors import UserError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UserError(f"Cannot listen on {host}:{port} ({err.strerror or err}): another server (an adkd.serve?) "
                            "holds it; give another --port.") from err  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adkd.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("model", type=Path, help="a run folder (checkpoints/last.ckpt) or a .ckpt")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--engine", choices=["torch", "onnx", "openvino"], default="torch",
                        help="onnx, openvino: the run's export (exported again if stale)")  # fmt: skip
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                        help="with --engine openvino: the export's precision")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body accepted (MB)")
    parser.add_argument("--category", default=None,
                        help="for a unified model (trained with category=all): the category to serve, with its "
                        "thresholds and images")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        from adkd.predict import _check_device

        _check_device(args.device)
        if args.max_upload_mb <= 0:
            raise UserError(f"--max-upload-mb must be above 0, got {args.max_upload_mb:g}.")
        _port_free(args.host, args.port)
        from adkd.serve.session import Session

        if args.precision != "fp32" and args.engine != "openvino":
            raise UserError(f"--precision {args.precision} is for --engine openvino.")
        session = Session(args.model, args.engine, args.device, precision=args.precision, category=args.category)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted before serving.", file=sys.stderr)
        return 130
    import uvicorn

    from adkd.serve.app import UploadLimit, create_app

    local = args.host in LOOPBACK
    if not local:
        print(f"warning: serving on {args.host}: anyone who can reach this machine can score images and change "
              "this run's threshold. Folder scoring is off.", file=sys.stderr)  # fmt: skip
    if session.images_note:
        print(f"warning: {session.images_note}", file=sys.stderr)
    app = UploadLimit(create_app(session, folders=local), int(args.max_upload_mb * 2**20))
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"Serving {session.checkpoint} ({session.describe()['method']}, {session.engine_name} on {args.device}) at "
          f"http://{shown}:{args.port}/  (POST /predict; Ctrl-C stops)", flush=True)  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    print("Stopped.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
