"""Scoring behind ``adkd predict``: images in, predictions.csv, figures and masks out (the files
and the engines: the command's help, :mod:`adkd.cli.predict`)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from adkd.data.dataset import read_image, resized
from adkd.data.records import IMAGE_SUFFIXES
from adkd.deploy.checkpoints import load_model
from adkd.deploy.engines import Deployable, OnnxModel, OpenVinoModel
from adkd.deploy.export import current_onnx, export_origin, stale_export, unfinished
from adkd.deploy.openvino import current_openvino
from adkd.errors import UserError
from adkd.locks import holder, release, try_lock
from adkd.report.panels import overlay

FIELDS = ["image_path", "pred_score", "normalized_score", "pred_label", "decision", "image_threshold"]


MARKER = ".adkd-predictions"  # in every --out folder: a later predict over a parent folder skips it


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given, folders searched recursively (:func:`walk_images`), glob patterns expanded."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found += walk_images(path)
        elif path.is_file():
            found.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not matches:
                raise UserError(f"No image at {item}: not a file, a folder or a glob pattern that matches.")
            found += matches
    return list(dict.fromkeys(found))


def walk_images(folder: Path, stop: Callable[[], bool] | None = None) -> Iterator[Path]:
    """The images below ``folder``, one at a time as the walk finds them, in path order (as
    ``sorted(folder.rglob("*"))`` would list them): hidden files and folders and adkd.deploy.predict's own
    output folders are skipped, links to folders are not followed (no loops). A caller that needs
    only the first N stops the walk there; ``stop``: asked before each folder is read, True ends
    the walk (a request given up)."""
    if (folder / MARKER).exists():
        return
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError:  # unreadable (permissions), or gone since
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_folder = entry.is_dir(follow_symlinks=False)
        except OSError:
            continue
        if is_folder:
            if stop is not None and stop():
                return
            yield from walk_images(Path(entry.path), stop)
        elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES and _is_file(entry):
            yield Path(entry.path)


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


class _Images:
    """Images resized to the model's input size; unreadable ones come back as their error."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, object, tuple[int, int] | str]:
        import torch

        try:
            img = read_image(self.paths[index])
        except UserError as err:
            return index, None, str(err)
        return index, resized(img, (self.size, self.size)).to(torch.float32) / 255, img.size


def _collate(items: list) -> list:
    return items


def predict(
    infer,
    paths: list[Path],
    image_size: int,
    threshold: float | None,
    out: Path,
    batch: int = 8,  # noqa: ANN001
    figures: bool = True,
    masks: bool = False,
    workers: int = 0,
) -> tuple[list[dict], list[str]]:
    """Score ``paths`` with ``infer`` (a :class:`~adkd.deploy.engines.Deployable` or an
    :class:`~adkd.deploy.engines.OnnxModel`); returns the CSV rows and the skipped files with why."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    names = _unique_names(paths)
    rows, skipped = [], []
    loader = DataLoader(_Images(paths, image_size), batch_size=batch, num_workers=workers, collate_fn=_collate)
    # Figures are drawn beside the model (numpy and PIL release the GIL), a few at a time.
    drawing = ThreadPoolExecutor(max_workers=2)
    pending = []
    try:
        with (
            (out / "predictions.csv").open("w", newline="") as f,
            torch.no_grad(),
            tqdm(total=len(paths), unit="image", desc="predict") as bar,
        ):
            writer = csv.DictWriter(f, fieldnames=FIELDS)  # rows written as they come: a stopped run keeps them
            writer.writeheader()
            for items in loader:
                good = [(i, img, size) for i, img, size in items if img is not None]
                skipped += [f"{paths[i]}: {why}" for i, img, why in items if img is None]
                if good:
                    _, score, norm_map, norm_score = (t.cpu() for t in infer(torch.stack([img for _, img, _ in good])))
                    for j, (i, image, size) in enumerate(good):
                        row = {
                            "image_path": str(paths[i]),
                            "pred_score": float(score[j]),
                            "image_threshold": threshold,
                            "normalized_score": None,
                            "pred_label": None,
                            "decision": "no threshold",
                        }
                        if threshold is not None:
                            anomalous = bool(score[j] > threshold)
                            row.update(
                                normalized_score=float(norm_score[j]),
                                pred_label=int(anomalous),
                                decision="anomalous" if anomalous else "normal",
                            )
                        rows.append(row)
                        writer.writerow(row)
                        if figures:
                            pending.append(
                                drawing.submit(_figure, image, norm_map[j, 0], row, out / "figures" / f"{names[i]}.png")
                            )
                        if masks and threshold is not None:
                            _mask(norm_map[j, 0], size, out / "masks" / f"{names[i]}_mask.png")
                f.flush()
                for done in [p for p in pending if p.done()]:
                    done.result()  # a drawing's error surfaces here
                pending = [p for p in pending if not p.done()]
                bar.update(len(items))
            for p in pending:
                p.result()
    finally:
        drawing.shutdown(cancel_futures=True)
    return rows, skipped


def _unique_names(paths: list[Path]) -> list[str]:
    """File names for outputs: the path below the inputs' common folder, '/' -> '__'."""
    import os

    parents = [str(p.parent) for p in paths]
    common = Path(os.path.commonpath(parents)) if paths else Path()
    return [str(p.relative_to(common).with_suffix("")).replace("/", "__") for p in paths]


def _figure(image, region, row: dict, path: Path) -> None:  # noqa: ANN001

    title = f"{Path(row['image_path']).name}: score {row['pred_score']:.4g}"
    if row["normalized_score"] is not None:
        title += f" (normalised {row['normalized_score']:.2f})"
    overlay(
        image.permute(1, 2, 0).numpy(),
        region.numpy() if row["normalized_score"] is not None else None,
        f"{title}: {row['decision']}",
        path,
        alarm=bool(row["pred_label"]),
    )


def _mask(region, size: tuple[int, int], path: Path) -> None:  # noqa: ANN001
    import torch.nn.functional as F
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    full = F.interpolate(region[None, None], size=(size[1], size[0]), mode="bilinear", align_corners=False)[0, 0]
    Image.fromarray(((full > 0.5).numpy() * 255).astype("uint8")).save(path)


def _engine(args: argparse.Namespace):  # noqa: ANN202
    """(infer, image size, image threshold) for the chosen engine; says before any scoring when
    the model has no threshold (a run that never finished)."""
    if args.engine != "torch" or args.model.suffix in (".onnx", ".xml"):
        return _exported_engine(args)
    if args.precision != "fp32":
        raise UserError(f"--precision {args.precision} is for --engine openvino; the torch engine runs fp32.")

    module, config = load_model(args.model, args.device, args.category)
    if args.threshold is not None:
        module.post.set_thresholds(image=args.threshold)
    threshold = float(module.post.image_threshold) if module.post.calibrated else None
    if threshold is None:
        print(
            f"warning: {unfinished(config)}. Scores only: no decisions (or give --threshold)"
            + (", no masks." if args.masks else "."),
            file=sys.stderr,
        )
    deployable = Deployable(module)
    return (lambda images: deployable(images.to(args.device))), config["image_size"], threshold


def exported_model(
    source: Path,
    engine: str,
    precision: str = "fp32",
    device: str = "cpu",  # noqa: ANN201
    category: str | None = None,
):
    """The run's export for ``engine`` (onnx, openvino), exported again when it does not come from
    the run's checkpoint and threshold as they are now; an export file given alone (.onnx, .xml) is
    refused when its run folder holds a newer checkpoint, or when it carries another category's
    thresholds than ``category`` (a unified model's; the run folder's export of it is chosen by it)."""
    if source.suffix in (".onnx", ".xml"):
        run_checkpoint, folder_category = export_origin(source)  # <run>/export[/<category>]/model.onnx
        why = None if run_checkpoint is None else stale_export(source, run_checkpoint, folder_category)
        if why:
            run = run_checkpoint.parent.parent
            again = f" --category {folder_category}" if folder_category else ""
            raise UserError(
                f"{why}: export it again (adkd export {run} --format {engine}{again}), "
                f"or give the run folder with --engine {engine}, which does."
            )
        path = source
    else:
        path = current_onnx(source, category) if engine == "onnx" else current_openvino(source, precision, category)
    model = (OnnxModel if engine == "onnx" else OpenVinoModel)(path, device)
    carried = model.metadata.get("category") or None
    if source.suffix in (".onnx", ".xml") and category is not None and carried != category:
        what = f"the thresholds of category {carried!r}" if carried else "a model of one category"
        raise UserError(
            f"{path} carries {what}, and --category asks for {category!r}: give that category's export "
            f"(<run>/export/{category}/), or the run folder."
        )
    return model, path


def _exported_engine(args: argparse.Namespace):  # noqa: ANN202
    if args.threshold is not None:
        raise UserError("--threshold applies to the torch engine; an exported model carries its thresholds.")
    engine = {".onnx": "onnx", ".xml": "openvino"}.get(args.model.suffix, args.engine)
    model, path = exported_model(args.model, engine, args.precision, args.device, args.category)
    if model.image_threshold is None:
        print(
            f"warning: {path} has no threshold (its run never finished training): scores only, no decisions"
            + (", no masks." if args.masks else "."),
            file=sys.stderr,
        )
    return model, model.image_size, model.image_threshold


def _hold(out: Path) -> int:
    """The lock on ``out``, a folder this process can write (checked before any model loads), held
    while this predict writes there: two predicts into one folder would overwrite (or splice) each
    other's rows."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder (created if missing).")
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = try_lock(out / ".adkd-predict.lock")  # also the test that the folder can be written
    except OSError as err:
        raise UserError(f"--out {out} cannot be written ({err.strerror or err}): give a folder you can write.") from err
    if lock is None:
        raise UserError(
            f"{out} is being written by another adkd.deploy.predict ({holder(out / '.adkd-predict.lock')}): "
            "wait for it to end, or give another --out."
        )
    return lock


def check_device(device: str) -> None:
    import torch

    if device == "cpu":
        return
    if not device.startswith("cuda"):
        raise UserError(f"--device {device!r}: cpu, cuda or cuda:N.")
    if not torch.cuda.is_available():
        raise UserError(f"--device {device}: torch sees no CUDA GPU here. Use --device cpu.")
    index = device.partition(":")[2]
    if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
        raise UserError(f"--device {device}: this machine has CUDA devices 0 to {torch.cuda.device_count() - 1}.")


def run(args: argparse.Namespace) -> int:
    lock, created = None, not args.out.exists()
    try:
        check_device(args.device)
        lock = _hold(args.out)  # from here to the end: a second predict into this folder is refused
        paths = [p for p in expand_inputs(args.inputs) if args.out.resolve() not in p.resolve().parents]
        if not paths:
            raise UserError(f"No images (png, jpg, bmp, tif) in {' '.join(args.inputs)}.")
        infer, image_size, threshold = _engine(args)
        rows, skipped = predict(
            infer, paths, image_size, threshold, args.out, args.batch, args.figures, args.masks, args.workers
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nInterrupted: {args.out / 'predictions.csv'} holds the images scored so far.", file=sys.stderr)
        return 130
    finally:
        if lock is not None:
            release(lock)
        if created and not (args.out / "predictions.csv").exists():  # failed before scoring: leave no empty folder
            for name in (".adkd-predict.lock", MARKER):
                (args.out / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                args.out.rmdir()
    anomalous = sum(1 for r in rows if r["pred_label"] == 1)
    decided = f"{anomalous} anomalous" if threshold is not None else "no threshold: scores only"
    print(f"{len(rows)} images scored ({decided}), written to {args.out / 'predictions.csv'}")
    if skipped:
        print(f"{len(skipped)} files skipped (unreadable):\n  " + "\n  ".join(skipped), file=sys.stderr)
    return 0 if rows else 1
