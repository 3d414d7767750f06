"""What serving holds up to: ``adkd serve`` in a process of its own on 127.0.0.1, one
client and then 16 at once, good images with bad uploads (not an image) and oversized ones (a
13000 x 13000 PNG of one colour: 20 KB on disk, 169 megapixels in its header) mixed in, per engine.

python experiments/serve_load.py [RUN] [--engines torch,onnx,openvino] [--clients 16] [--seconds 60]

RUN: a trained run folder; without one, the one-epoch run of ``serve_latency.py`` is trained first.
For each engine the server is started (``--engine onnx|openvino`` export the run first, once),
warmed up, then:

- one client: good images one after another (the latency a line sees alone);
- ``--clients`` at once, each sending good images with every 8th upload bad and every 16th
  oversized, up to ``--per-client`` requests or ``--seconds``: no 5xx, every good image answered
  200, bad ones 400, oversized ones 413;
- ``--clients`` at once sending oversized uploads only (four each): the server's memory under them.

Prints, per engine and phase: requests, 5xx, good images answered, median and p99 latency of the
good ones, requests/second (all, and good images answered), and the server's peak resident memory
(sampled every 10 ms from /proc/<pid>/status), with its resident memory before and after the
concurrent phase (target: within 10%). Only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from serve_latency import percentile, quick_run

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (``VmRSS``) or its peak (``VmHWM``), in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Peak:
    """The largest resident memory of ``pid`` while the block runs (sampled every 10 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._done = pid, 0.0, threading.Event()

    def __enter__(self) -> Peak:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.01)

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(self.pid))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(run: Path, engine: str) -> tuple[subprocess.Popen, str]:
    """``adkd serve`` on 127.0.0.1 with ``engine``; its process and URL once it serves."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    args = [sys.executable, "-m", "adkd", "serve", str(run), "--host", "127.0.0.1", "--port", str(port)]
    args += ["--engine", engine] if engine != "openvino" else ["--engine", "openvino", "--precision", "fp32"]
    server = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    said = []
    for line in server.stdout:
        said.append(line.rstrip())
        if line.startswith("Serving "):
            threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()  # drain
            return server, f"http://127.0.0.1:{port}"
    server.wait()
    raise RuntimeError(f"adkd.deploy.serve --engine {engine} did not start: {said[-1] if said else 'no output'}")


def oversized_png() -> bytes:
    """13000 x 13000 pixels of one colour: about 20 KB as a 1-bit PNG, half a gigabyte decoded to RGB."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (13000, 13000), 1).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


class Load:
    """Requests sent and what came back: (kind, status, seconds)."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, int, float]] = []
        self._lock = threading.Lock()

    def send(self, client, url: str, kind: str, payload: tuple) -> None:  # noqa: ANN001
        start = time.perf_counter()
        try:
            status = client.post(f"{url}/predict", files={"file": payload}).status_code
        except Exception:  # noqa: BLE001 - a lost connection is counted as a failure of the server
            status = 599
        with self._lock:
            self.answers.append((kind, status, time.perf_counter() - start))

    def summary(self, seconds: float) -> dict:
        good = [a for a in self.answers if a[0] == "good"]
        times = [1000 * a[2] for a in good if a[1] == 200]
        expected = {"good": 200, "bad": 400, "oversized": 413}
        return {
            "requests": len(self.answers),
            "5xx": sum(a[1] >= 500 for a in self.answers),
            "good": f"{sum(a[1] == 200 for a in good)}/{len(good)}",
            "as expected": all(a[1] == expected[a[0]] for a in self.answers),
            "median": statistics.median(times) if times else float("nan"),
            "p99": percentile(times, 0.99) if times else float("nan"),
            "rate": len(self.answers) / seconds,
            "good rate": len(times) / seconds,
        }


def phase(url: str, clients: int, per_client: int, seconds: float, mix, server: subprocess.Popen) -> dict:  # noqa: ANN001
    """``clients`` keep-alive clients at once, each sending ``per_client`` requests (``mix(i)``:
    the i-th one's kind and file) or until ``seconds`` have passed."""
    import httpx

    load, deadline = Load(), time.monotonic() + seconds

    def client_loop(_: int) -> None:
        with httpx.Client(timeout=120) as client:
            for i in range(per_client):
                if time.monotonic() > deadline:
                    break
                kind, payload = mix(i)
                load.send(client, url, kind, payload)

    with Peak(server.pid) as peak:
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client_loop, range(clients)))
        elapsed = time.perf_counter() - start
    return {**load.summary(elapsed), "peak": peak.peak}


def bench_engine(run: Path, engine: str, args: argparse.Namespace, good: bytes, huge: bytes) -> list[dict]:
    import httpx

    server, url = start_server(run, engine)
    rows = []
    try:
        good_file, bad_file = ("part.png", good, "image/png"), ("notes.txt", b"not an image at all", "text/plain")
        huge_file = ("huge.png", huge, "image/png")
        with httpx.Client(timeout=120) as client:
            for _ in range(10):  # warm-up: first calls allocate
                client.post(f"{url}/predict", files={"file": good_file}).raise_for_status()
        alone = phase(url, 1, args.single, args.seconds, lambda i: ("good", good_file), server)
        rows.append({"engine": engine, "phase": "1 client", **alone})
        time.sleep(1.0)
        before = rss_mb(server.pid)

        def mixed(i: int) -> tuple[str, tuple]:
            if i % 16 == 15:
                return "oversized", huge_file
            if i % 8 == 7:
                return "bad", bad_file
            return "good", good_file

        busy = phase(url, args.clients, args.per_client, args.seconds, mixed, server)
        time.sleep(1.0)
        after = rss_mb(server.pid)
        rows.append(
            {"engine": engine, "phase": f"{args.clients} clients, mixed", **busy, "before": before, "after": after}
        )
        flood = phase(url, args.clients, 4, args.seconds, lambda i: ("oversized", huge_file), server)
        rows.append(
            {
                "engine": engine,
                "phase": f"{args.clients} clients, oversized",
                **flood,
                "after": rss_mb(server.pid),
                "hwm": rss_mb(server.pid, "VmHWM"),
            }
        )
        start = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        rows[-1]["stop"] = time.monotonic() - start
    finally:
        if server.poll() is None:
            server.kill()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, nargs="?", default=None)
    parser.add_argument("--engines", default="torch,onnx,openvino")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-client", type=int, default=24, help="requests each client sends at most")
    parser.add_argument("--single", type=int, default=60, help="requests of the one-client phase")
    parser.add_argument("--seconds", type=float, default=60.0, help="at most this long per phase")
    args = parser.parse_args()
    from PIL import Image

    from adkd.deploy.serve.session import Session  # noqa: F401 - fail here, not in the server, if adkd is missing

    huge = oversized_png()
    with tempfile.TemporaryDirectory() as scratch:
        run = args.run or quick_run(Path(scratch) / "run")
        tested = run / "test_predictions.csv"  # the run's own test images: what a line sends it
        image = Path(next(csv.DictReader(tested.open()))["image_path"]) if tested.is_file() else None
        picture = Image.open(image).convert("RGB") if image and image.is_file() else Image.new("RGB", (256, 256))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        good = buffer.getvalue()
        rows = []
        for engine in args.engines.split(","):
            try:
                rows += bench_engine(run, engine, args, good, huge)
            except Exception as err:  # noqa: BLE001 - an engine this machine lacks: say so, go on
                rows.append({"engine": engine, "phase": f"not run: {str(err)[:100]}"})
    print(
        f"adkd.deploy.serve under load: {args.clients} clients, good {len(good):,}-byte PNG ({picture.size[0]}x"
        f"{picture.size[1]}), bad 19-byte text, oversized {len(huge):,}-byte PNG (13000x13000); {os.cpu_count()} "
        "cores"
    )
    header = (
        "engine",
        "phase",
        "requests",
        "5xx",
        "good 200",
        "as expected",
        "median ms",
        "p99 ms",
        "req/s",
        "good/s",
        "peak RSS MB",
        "RSS before -> after MB",
    )
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        if "requests" not in r:
            print(f"| {r['engine']} | {r['phase']} |" + " |" * (len(header) - 2))
            continue
        change = ""
        if "before" in r:
            change = f"{r['before']:.0f} -> {r['after']:.0f} ({100 * (r['after'] / r['before'] - 1):+.1f}%)"
        elif "hwm" in r:
            change = f"after {r['after']:.0f}; lifetime peak {r['hwm']:.0f}; SIGTERM stop {r['stop']:.1f} s"
        print(
            f"| {r['engine']} | {r['phase']} | {r['requests']} | {r['5xx']} | {r['good']} | "
            f"{'yes' if r['as expected'] else 'NO'} | {r['median']:.1f} | {r['p99']:.1f} | {r['rate']:.1f} | "
            f"{r['good rate']:.1f} | {r['peak']:.0f} | {change} |"
        )


if __name__ == "__main__":
    main()
