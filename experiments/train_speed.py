"""Training speed per method: adkd's epoch against anomalib's and against its own limit.

For each method, on the same data, backbone, image size, batch and threads, interleaved epoch by
epoch: every variant's fit runs in its own thread, and they take turns, one epoch each, in an
order that alternates (nothing else of this process runs during a timed epoch). A busy machine so
slows them alike. On the CPU an epoch's time is the fit thread's CPU time (one torch thread, no
loader workers: the fit's work is all in its thread), which other processes' load hardly moves; on
a GPU wall time. The table gives each variant's fastest epoch after the first (the first fills
the cache and starts the loader):

- ``adkd``: a Lightning fit as `python -m adkd.run` trains (the real datamodule), with its configs
  as they are: the frozen teacher's features cached after the first epoch (``teacher_cache``,
  conf/run.yaml), channels-last and fused optimisers where the method's yaml sets them;
- ``before``: the same with the teacher cache, channels-last and the fused optimiser off;
- ``limit``: the same fit on the epoch's batches already in memory (taken once from the datamodule,
  synthetic anomalies and all) with the teacher's features cached: what is left is the student's
  forward and backward (and what the synthetic anomalies force to be recomputed), and Lightning's step;
- ``anomalib``: its network, loss and optimiser for the method (rd4ad: ReverseDistillation, stfpm:
  Stfpm, patchcore: Patchcore, as experiments/peer_check_anomalib.py builds them) in a plain loop over
  the same loader.

PatchCore trains one epoch (its single pass and coreset): that one is timed. ``before`` is adkd with all three techniques off (as it trained before them); ``--extra`` times
each alone on top of it: ``cache`` (the teacher cache), ``channels_last`` (weights and images in
channels-last), ``fused`` (the optimiser's fused implementation).

    python experiments/train_speed.py [--methods rd4ad stfpm ...] [--backbone resnet18] [--image-size 256]
        [--batch 8] [--train-images 16] [--epochs 3] [--threads 1] [--csv results.csv]
        [--extra cache channels_last fused] [overrides ...]

On a CUDA machine it trains there (``--accelerator``), synchronising the device at every epoch's
ends; threads then only bound the loader's side.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch

METHODS = ("rd4ad", "stfpm", "rdpp", "dhkd", "adps", "destseg", "patchcore")
ONE_EPOCH = {"patchcore"}  # one pass: its only epoch is timed


def _clock() -> float:
    """On the CPU, this thread's CPU time: with one torch thread and the loader in the same thread
    (no workers), all of a fit's work is in its thread, and other processes' load on a shared
    machine does not count. On a GPU, wall time (the device's work is not the thread's)."""
    return time.perf_counter() if torch.cuda.is_available() else time.thread_time()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Turn:
    """One variant's fit, run in its own thread one epoch at a time: ``step()`` lets it run from where
    it waits to its next epoch's start (the first: its setup; the last: its end), so variants take
    turns and each epoch is timed while nothing else of this process runs."""

    def __init__(self, name: str, work) -> None:  # noqa: ANN001 - work(turn): the fit, calling turn.epoch_*
        import threading

        self.name, self.times, self.finished, self.error = name, [], False, None
        self._go, self._done = threading.Semaphore(0), threading.Semaphore(0)
        self._start = 0.0

        def run() -> None:
            self._go.acquire()
            try:
                torch.set_num_threads(torch.get_num_threads())
                work(self)
            except BaseException as err:  # noqa: BLE001 - handed to the main thread
                self.error = err
            finally:
                self.finished = True
                self._done.release()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def step(self) -> None:
        if self.finished:
            return
        self._go.release()
        self._done.acquire()
        if self.error is not None:
            raise RuntimeError(f"{self.name} failed") from self.error

    def epoch_start(self) -> None:
        self._done.release()  # the turn back: whatever ran since the last epoch is not in a measurement
        self._go.acquire()
        _sync()
        self._start = _clock()

    def epoch_end(self) -> None:
        _sync()
        self.times.append(_clock() - self._start)

    def callback(self):  # noqa: ANN201
        from lightning.pytorch.callbacks import Callback

        turn = self

        class _Callback(Callback):
            def on_train_epoch_start(self, trainer, module):  # noqa: ANN001
                turn.epoch_start()

            def on_train_epoch_end(self, trainer, module):  # noqa: ANN001
                turn.epoch_end()

        return _Callback()


def _config(method: str, args: argparse.Namespace, extra: list[str]):  # noqa: ANN202
    from adkd.training.config import compose

    overrides = [
        f"method={method}",
        f"backbone={args.backbone}",
        "backbone.pretrained=false",
        f"image_size={args.image_size}",
        f"batch_size={args.batch}",
        f"lr={args.lr}",
        f"dataset.limit_train={args.train_images}",
        *(["dataset.num_workers=0"] if args.accelerator == "cpu" else []),  # the fit's work all in its thread
        "logger=none",
        *args.overrides,
        *extra,
    ]
    return compose(overrides, Path(args.out) / method)


def _trainer(args: argparse.Namespace, epochs: int, callbacks: list):  # noqa: ANN202
    import lightning as L

    return L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        precision=args.precision,
        max_epochs=epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


# Each variant's overrides. "before": all three techniques off, as adkd trained before them; each
# technique alone on top of it; "adkd" and "limit": the configs as they are.
BEFORE = ["teacher_cache.enabled=false", "++method.channels_last=false", "++method.optimizer.fused=false"]
VARIANTS = {
    "before": BEFORE,
    "adkd": [],
    "limit": [],
    "cache": [*BEFORE[1:], "teacher_cache.enabled=true"],
    "channels_last": [BEFORE[0], BEFORE[2], "++method.channels_last=true"],
    "fused": [*BEFORE[:2], "++method.optimizer.fused=true"],
}
NO_OPTIMIZER = {"patchcore"}


def adkd_fit(method: str, args: argparse.Namespace, variant: str, turn: Turn) -> None:
    """A Lightning fit (``variant``: a key of VARIANTS), its epochs timed by ``turn``."""
    import lightning as L
    from hydra.utils import instantiate

    extra = [o for o in VARIANTS[variant] if not (method in NO_OPTIMIZER and "optimizer" in o)]
    cfg = _config(method, args, extra)
    L.seed_everything(0, verbose=False)
    datamodule = instantiate(cfg.dataset)
    model = instantiate(cfg.method, _convert_="all")
    epochs = 1 if method in ONE_EPOCH else 1 + args.epochs
    trainer = _trainer(args, epochs, [turn.callback()])
    if variant == "limit":
        datamodule.prepare_data()
        datamodule.setup("fit")
        batches = list(datamodule.train_dataloader())  # epoch 0's, synthetic anomalies as drawn
        loader = torch.utils.data.DataLoader(batches, batch_size=None, pin_memory=args.accelerator != "cpu")
        trainer.fit(model, train_dataloaders=loader)
    else:
        trainer.fit(model, datamodule=datamodule)


def _peer():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(
        "peer_check_anomalib", Path(__file__).with_name("peer_check_anomalib.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def anomalib_fit(method: str, args: argparse.Namespace, weights: str, turn: Turn) -> None:
    """Seconds per epoch of anomalib's network, loss and optimiser on adkd's loader (a plain loop, as
    experiments/peer_check_anomalib.py trains it)."""
    from hydra.utils import instantiate

    peer = _peer()
    device = torch.device("cuda" if args.accelerator in ("gpu", "cuda") else "cpu")
    cfg = _config(method, args, [])
    torch.manual_seed(0)
    datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model, optimizer, loss_of = peer.ANOMALIB[method](args.backbone, args.image_size, weights)
    model.to(device)
    loader = datamodule.train_dataloader()
    autocast = torch.autocast(device.type, enabled=args.precision == "16-mixed")
    for epoch in range(1 if optimizer is None else 1 + args.epochs):
        model.train()
        loader.sampler.set_epoch(epoch)
        turn.epoch_start()
        for batch in loader:
            images = peer.imagenet_normalized(batch["image"]).to(device, non_blocking=True)
            with autocast:
                if optimizer is None:
                    with torch.no_grad():
                        model(images)
                    continue
                optimizer.zero_grad()
                loss = loss_of(images)
            loss.backward()
            optimizer.step()
        if optimizer is None:
            model.subsample_embedding(
                0.1
            )  # anomalib's default coreset_sampling_ratio (adkd's epoch has its coreset too)
        turn.epoch_end()


def teacher_weights(backbone: str, folder: Path) -> str:
    """A torchvision state dict of the backbone (seeded random init; pretrained weights make no
    difference to the time) for anomalib's teacher."""
    import torchvision

    torch.manual_seed(0)
    net = {"mobilenet_v2": torchvision.models.mobilenet_v2}.get(backbone) or getattr(torchvision.models, backbone)
    path = folder / f"{backbone}.pth"
    torch.save(net().state_dict(), path)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--lr", type=float, default=1e-3, help="one rate for every method (speed does not depend on it)"
    )
    parser.add_argument("--train-images", type=int, default=16, help="training images (dataset.limit_train)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed (the fastest counts), after a first one")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (one: runs on a shared CPU)")
    parser.add_argument("--accelerator", default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default=None, help="default: 32-true on the CPU, 16-mixed on a GPU")
    parser.add_argument(
        "--extra", nargs="*", default=["cache", "channels_last", "fused"], help="techniques timed on their own"
    )
    parser.add_argument("--no-anomalib", action="store_true")
    parser.add_argument("--out", default="outputs/train_speed")
    parser.add_argument("--csv", type=Path, help="also write the table here")
    parser.add_argument("--from-log", type=Path, nargs="+", help="only the table, from these runs' printed lines")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every adkd run (e.g. dataset=...)")
    args = parser.parse_args()
    import lightning  # noqa: F401 - first: its import sets its loggers' levels, which the next line lowers

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # one line a measurement, not Lightning's
    warnings.filterwarnings("ignore", ".*(val_dataloader|does not have many workers|litlogger).*")
    args.precision = args.precision or ("32-true" if args.accelerator == "cpu" else "16-mixed")
    torch.set_num_threads(args.threads)
    variants = ["before", "adkd", "limit", *args.extra]
    times: dict[tuple[str, str], list[float]] = {}
    if args.from_log:
        for line in (line for path in args.from_log for line in path.read_text().splitlines()):
            if line.startswith("round ") and line.endswith(" s/epoch"):
                _, _, method, variant, seconds, _ = line.split()
                times.setdefault((method, variant), []).append(float(seconds))
        args.methods = list(dict.fromkeys(m for m, _ in times))
        write(args, table(args, times, variants))
        return
    peer = None if args.no_anomalib else _peer()
    with tempfile.TemporaryDirectory() as tmp:
        weights = None if peer is None else teacher_weights(args.backbone, Path(tmp))
        for method in args.methods:
            runs = [v for v in variants if not (method in NO_OPTIMIZER and v == "fused")]
            if peer is not None and peer.ANOMALIB.get(method) is not None:
                runs.append("anomalib")
            turns = []
            for variant in runs:
                if variant == "anomalib":
                    work = lambda t, m=method: anomalib_fit(m, args, weights, t)  # noqa: E731
                else:
                    work = lambda t, m=method, v=variant: adkd_fit(m, args, v, t)  # noqa: E731
                turns.append(Turn(variant, work))
            for step in range(2 + (0 if method in ONE_EPOCH else args.epochs)):  # setup, epochs, the end
                for turn in turns if step % 2 == 0 else turns[::-1]:  # alternating the order
                    turn.step()
            for turn in turns:
                timed = turn.times if method in ONE_EPOCH else turn.times[1:]  # after the first epoch
                for r, seconds in enumerate(timed):
                    times.setdefault((method, turn.name), []).append(seconds)
                    print(f"round {r} {method:<9} {turn.name:<13} {seconds:7.2f} s/epoch", flush=True)
    write(args, table(args, times, variants))


def write(args: argparse.Namespace, rows: list[list[str]]) -> None:
    for row in rows:
        print(" | ".join(f"{c:>13}" for c in row))
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as f:
            csv.writer(f).writerows(rows)


def table(args: argparse.Namespace, times: dict, variants: list[str]) -> list[list[str]]:
    """Each variant's fastest epoch (on a shared machine the others' load only ever slows one
    down), and their ratios: before and now against anomalib and the limit;
    each technique alone against before."""
    med = {k: min(v) for k, v in times.items()}
    header = ["method", "before (s/epoch)", "adkd (s/epoch)", "limit (s/epoch)", "anomalib (s/epoch)"]
    header += ["before / anomalib", "adkd / anomalib", "before / limit", "adkd / limit"]
    header += [f"{e} alone / before" for e in variants[3:]]
    rows = [header]
    for method in args.methods:
        before, after, limit = med[(method, "before")], med[(method, "adkd")], med[(method, "limit")]
        peer = med.get((method, "anomalib"))
        row = [method, f"{before:.2f}", f"{after:.2f}", f"{limit:.2f}", "" if peer is None else f"{peer:.2f}"]
        row += ["" if peer is None else f"{before / peer:.2f}x", "" if peer is None else f"{after / peer:.2f}x"]
        row += [f"{before / limit:.2f}x", f"{after / limit:.2f}x"]
        row += [f"{med[(method, e)] / before:.2f}x" if (method, e) in med else "" for e in variants[3:]]
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
