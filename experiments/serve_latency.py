"""What serving costs: ``POST /predict`` latency over HTTP against the engine's own batch-1 time,
measured side by side in one process (the server in a thread, a keep-alive client in the main
thread, as a line's integration would call it).

python experiments/serve_latency.py [RUN] [--requests 200] [--engine torch|onnx]

RUN: a trained run folder; without one, a one-epoch ADPS run on the embedded textures is trained
first (the latency does not depend on how well a model is trained). Prints the median and p99 of
both, and the target: median HTTP latency at most 1.2 x the engine's median + 5 ms.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch


def quick_run(folder: Path) -> Path:
    from adkd.training.config import compose
    from adkd.training.run import run

    run(compose(["max_epochs=1", "dataset.limit_train=16", "logger=none", "num_figures=0"], folder))
    return folder


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, nargs="?", default=None)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--engine", choices=["torch", "onnx"], default="torch")
    args = parser.parse_args()
    import httpx
    from PIL import Image

    from adkd.data.dataset import resized
    from adkd.deploy.serve.app import UploadLimit, create_app, running
    from adkd.deploy.serve.session import Session

    with tempfile.TemporaryDirectory() as scratch:
        source = args.run or quick_run(Path(scratch) / "run")
        session = Session(source, args.engine)
        size = session.image_size
        first = next((s.path for s in session.images["test"]), None)
        picture = Image.open(first).convert("RGB") if first else Image.new("RGB", (size, size), "gray")
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        payload = buffer.getvalue()
        tensor = resized(picture, (size, size)).float()[None] / 255  # what /predict hands the engine

        engine, http = [], []
        with running(UploadLimit(create_app(session), 2**26)) as url, httpx.Client() as client:
            for _ in range(10):  # warm-up: first calls allocate
                session.infer(tensor)
                client.post(f"{url}/predict", files={"file": ("part.png", payload, "image/png")})
            for _ in range(args.requests):  # interleaved: both see the same machine load
                start = time.perf_counter()
                session.infer(tensor)
                engine.append(time.perf_counter() - start)
                start = time.perf_counter()
                answer = client.post(f"{url}/predict", files={"file": ("part.png", payload, "image/png")})
                http.append(time.perf_counter() - start)
                answer.raise_for_status()
    ms = lambda v: 1000 * v  # noqa: E731
    engine_median, http_median = ms(statistics.median(engine)), ms(statistics.median(http))
    target = 1.2 * engine_median + 5
    print(
        f"{session.describe()['method']} at {size} px, {args.engine} engine, {torch.get_num_threads()} threads, "
        f"{args.requests} requests, {len(payload):,}-byte PNG"
    )
    print(f"  engine batch 1: median {engine_median:.2f} ms, p99 {ms(percentile(engine, 0.99)):.2f} ms")
    print(f"  POST /predict:  median {http_median:.2f} ms, p99 {ms(percentile(http, 0.99)):.2f} ms")
    print(
        f"  target: median <= 1.2 x {engine_median:.2f} + 5 = {target:.2f} ms: "
        f"{'met' if http_median <= target else 'MISSED'} (overhead {http_median - engine_median:.2f} ms)"
    )


if __name__ == "__main__":
    main()
