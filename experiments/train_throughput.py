"""Training throughput of each method through the real training path, and how much of it the
accelerator spends waiting on the CPU.

For each method, two Lightning fits of the same model on the same device and precision:

- ``pipeline``: the real datamodule (decoding, resizing, caching, synthetic anomalies, loader
  workers) as `python -m adkd.run` builds it;
- ``compute``: one batch taken from that datamodule and served again every step from memory,
  so the step never waits on data.

images/s is counted over the epochs after a first warm-up epoch (which pays for cuDNN's kernel
search, once per batch shape, and the loader's start), between two device synchronisations. The
ratio pipeline / compute is the share of the step the accelerator is busy; 1.0 = never waits.

    python experiments/train_throughput.py --root <folder in the MVTec layout> [--methods <registered methods>]
        [--backbone wide_resnet50_2] [--image-size 256] [--batch 32] [--precision 16-mixed] [--epochs 3]
    python experiments/train_throughput.py --make-folder /tmp/synthetic   # 240 MVTec-sized training images
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from adkd.methods.registry import method_names


class StepTimer:
    """Times the epochs after the first (device synchronised at both ends of the window)."""

    def __init__(self, trace: bool = False) -> None:
        from lightning.pytorch.callbacks import Callback

        timer = self

        class _Callback(Callback):
            def on_train_epoch_start(self, trainer, module):  # noqa: ANN001
                if trainer.current_epoch == 1:
                    _sync()
                    timer.start = time.perf_counter()

            def on_train_batch_start(self, trainer, module, batch, batch_idx):  # noqa: ANN001
                if timer.start is not None:
                    timer.images += len(batch["image"])
                if timer.trace:
                    _sync()
                    now = time.perf_counter()
                    timer.steps.append((trainer.current_epoch, batch_idx, now - (timer.last or now)))
                    timer.last = now

            def on_train_end(self, trainer, module):  # noqa: ANN001
                _sync()
                timer.end = time.perf_counter()

        self.callback = _Callback()
        self.start = self.end = None
        self.images = 0
        self.trace, self.steps, self.last = trace, [], None

    def images_per_second(self) -> float:
        return self.images / (self.end - self.start)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_folder(root: Path, n_train: int = 240, size: int = 900) -> Path:
    """A category ``synthetic`` in the MVTec layout with MVTec-sized RGB PNGs (smooth gradients
    plus noise, so PNG decoding costs what a real photo's does)."""
    from concurrent.futures import ProcessPoolExecutor

    cat = root / "synthetic"
    jobs = []
    for split, n in (("train/good", n_train), ("test/good", 8), ("test/defect", 8)):
        (cat / split).mkdir(parents=True, exist_ok=True)
        jobs += [(cat / split / f"{i:03d}.png", size, len(jobs) + i) for i in range(n)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_image, *zip(*jobs, strict=True)))
    return root


def _write_image(path: Path, size: int, seed: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 200, size, dtype=np.float32)
    base = ramp[None, :, None] * np.array([1.0, 0.9, 0.8]) + rng.normal(0, 12, (size, size, 3))
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path, compress_level=1)


def measure(method: str, args: argparse.Namespace, compute_only: bool) -> dict:
    import lightning as L
    from hydra.utils import instantiate

    from adkd.training.config import compose

    overrides = [
        f"method={method}",
        "dataset=folder",
        f"dataset.root={args.root}",
        "category=synthetic",
        f"backbone={args.backbone}",
        "backbone.pretrained=false",
        f"image_size={args.image_size}",
        f"batch_size={args.batch}",
        "logger=none",
        f"dataset.num_workers={args.workers}",
        *args.overrides,
    ]
    cfg = compose(overrides, Path(args.out) / f"{method}-{'compute' if compute_only else 'pipeline'}")
    L.seed_everything(0)
    start = time.perf_counter()
    datamodule = instantiate(cfg.dataset)
    model = instantiate(cfg.method, _convert_="all")
    if compute_only:
        datamodule.prepare_data()
        datamodule.setup("fit")  # the method's synthetic anomalies (its yaml's `synthesis`) are in its samples
        batches = len(datamodule.train_dataloader())
        batch = next(iter(datamodule.train_dataloader()))
        loader = torch.utils.data.DataLoader([batch] * batches, batch_size=None, pin_memory=True)
        fit_kwargs = {"train_dataloaders": loader}
    else:
        fit_kwargs = {"datamodule": datamodule}
    timer = StepTimer(args.trace)
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        precision=args.precision,
        max_epochs=1 + args.epochs,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer.callback],
        benchmark=True,
    )
    trainer.fit(model, **fit_kwargs)
    if args.trace:
        print("epoch, batch, seconds since the previous batch started:")
        print(" ".join(f"{e}/{b}:{dt:.3f}" for e, b, dt in timer.steps), flush=True)
    return {"images_per_s": timer.images_per_second(), "wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path)
    parser.add_argument("--make-folder", type=Path, help="write a synthetic MVTec-sized category here and exit")
    parser.add_argument("--methods", nargs="+", default=method_names())
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", default="16-mixed")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs, after one warm-up epoch")
    parser.add_argument("--accelerator", default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="outputs/throughput")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--trace", action="store_true", help="print each step's time (synchronises every step)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    if args.make_folder:
        print(f"Written: {make_folder(args.make_folder)}")
        return
    results = {}
    for method in args.methods:
        pipeline = measure(method, args, compute_only=False)
        compute = measure(method, args, compute_only=True)
        busy = pipeline["images_per_s"] / compute["images_per_s"]
        results[method] = {"pipeline": pipeline, "compute": compute, "busy_share": busy}
        print(
            f"{method:<6} pipeline {pipeline['images_per_s']:7.1f} img/s   compute-only "
            f"{compute['images_per_s']:7.1f} img/s   busy {100 * busy:5.1f}%",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
