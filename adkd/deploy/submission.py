"""The MVTec AD 2 submission writer behind ``adkd submit``: the private test sets' maps and
segmentations in the layout MVTec's evaluation server takes (what the folder holds and why: the
command's help, :mod:`adkd.cli.submit`)."""

from __future__ import annotations

import argparse
import sys
import tarfile
from pathlib import Path

import numpy as np

from adkd.data.dataset import read_image, resized
from adkd.data.mvtec_ad2 import PRIVATE_SPLITS, MVTecAD2DataModule
from adkd.deploy.checkpoints import load_model, model_categories
from adkd.deploy.engines import Deployable
from adkd.errors import UserError

MAPS, SEGMENTATIONS = "anomaly_images", "anomaly_images_thresholded"
FLOAT16_MAX = float(np.finfo(np.float16).max)


def write_category(
    model,
    image_size: int,
    root: Path,
    category: str,
    out: Path,
    batch: int = 8,  # noqa: ANN001
    device: str = "cpu",
    compression: str | None = "zlib",
) -> int:
    """Write the maps and segmentations of ``category``'s private test images under ``out`` with
    ``model`` (a trained LightningModule with its thresholds, taking ``image_size`` px images);
    returns the number of images."""
    import tifffile
    import torch
    import torch.nn.functional as F
    from PIL import Image

    if not model.post.calibrated or torch.isnan(model.post.pixel_threshold):
        raise UserError(
            "The run has no pixel threshold (it never finished training): the server's segmentations "
            "need one. Finish the run (resume=true) first."
        )
    deployable = Deployable(model)
    dataset = MVTecAD2DataModule(root=str(root), category=category)
    written = 0
    for split in PRIVATE_SPLITS:
        paths = dataset.private_images(split)
        for folder in (MAPS, SEGMENTATIONS):
            (out / folder / category / split).mkdir(parents=True, exist_ok=True)
        for start in range(0, len(paths), batch):
            chunk = paths[start : start + batch]
            images = [read_image(p) for p in chunk]
            inputs = torch.stack([resized(img, (image_size, image_size)) for img in images]).float() / 255
            with torch.no_grad():
                maps = deployable(inputs.to(device))[0].float().cpu()
            for path, image, anomaly_map in zip(chunk, images, maps, strict=True):
                full = F.interpolate(
                    anomaly_map[None], size=(image.height, image.width), mode="bilinear", align_corners=False
                )[0, 0]
                relative = model.post.in_threshold_units(full).clamp(-FLOAT16_MAX, FLOAT16_MAX).numpy()
                tifffile.imwrite(
                    out / MAPS / category / split / f"{path.stem}.tiff",
                    relative.astype(np.float16),
                    compression=compression,
                )
                segmentation = (relative > 1).astype(np.uint8) * 255
                Image.fromarray(segmentation).save(out / SEGMENTATIONS / category / split / f"{path.stem}.png")
                written += 1
    return written


def problems(out: Path, root: Path | None = None) -> tuple[list[str], list[str]]:
    """(what the server would refuse, the categories still missing) in the folder ``out``: nothing
    but the two folders, the categories and their two splits; each split holding one map and one
    segmentation per private test image (the images under ``root``, where given), maps single-channel
    float16, segmentations single-channel 0/255."""
    import tifffile
    from PIL import Image

    found, missing = [], []
    allowed = {
        out: {MAPS, SEGMENTATIONS},
        out / MAPS: set(MVTecAD2DataModule.categories),
        out / SEGMENTATIONS: set(MVTecAD2DataModule.categories),
    }
    allowed |= {out / folder / c: set(PRIVATE_SPLITS) for folder in (MAPS, SEGMENTATIONS) for c in allowed[out / MAPS]}
    for folder, names in allowed.items():
        extra = sorted(p.name for p in folder.iterdir() if p.name not in names) if folder.is_dir() else []
        if extra:
            found.append(
                f"{folder}: holds {', '.join(extra)}, which the server refuses (it takes only "
                f"{', '.join(sorted(names))})"
            )
    for category in MVTecAD2DataModule.categories:
        if not (out / MAPS / category).is_dir():
            missing.append(category)
            continue
        for split in PRIVATE_SPLITS:
            expected = None
            if root is not None and (root / category / split).is_dir():
                expected = {p.stem for p in MVTecAD2DataModule(root=str(root), category=category).private_images(split)}
            for folder, suffix in ((MAPS, ".tiff"), (SEGMENTATIONS, ".png")):
                where = out / folder / category / split
                files = sorted(where.iterdir()) if where.is_dir() else []
                if not files:
                    found.append(f"{where}: missing or empty")
                    continue
                stems = {f.stem for f in files}
                if any(f.suffix != suffix for f in files):
                    found.append(f"{where}: holds files other than {suffix}")
                if expected is not None and stems != expected:
                    found.append(
                        f"{where}: test images without a file: {len(expected - stems)}, files of no "
                        f"test image: {len(stems - expected)}"
                    )
                for f in (f for f in files if f.suffix == suffix):
                    if suffix == ".tiff":
                        array = tifffile.imread(f)
                        if array.ndim != 2 or array.dtype != np.float16:
                            found.append(f"{f}: {array.dtype} with shape {array.shape}, not one float16 channel")
                    else:
                        array = np.asarray(Image.open(f))
                        if array.ndim != 2 or not np.isin(np.unique(array), (0, 255)).all():
                            found.append(f"{f}: not one channel of 0 and 255")
    return found, missing


def archive(out: Path) -> Path:
    """``<out>.tar.gz`` beside ``out``, its members under ``<out's name>/`` as MVTec's checker writes them."""
    target = out.parent / f"{out.name}.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            tar.add(path, arcname=str(Path(out.name) / path.relative_to(out)))
    return target


def run(args: argparse.Namespace) -> int:
    try:
        seen: dict[str, Path] = {}
        for run, unified_category in [(r, c) for r in args.runs for c in model_categories(r) or [None]]:
            model, config = load_model(run, args.device, unified_category)  # a unified run: each of its categories
            if config.get("dataset_name") != MVTecAD2DataModule.name:
                raise UserError(
                    f"{run} was trained on {config.get('dataset_name')!r}, not mvtec_ad2: give one "
                    "MVTec AD 2 run per category."
                )
            category = config["category"]
            if category in seen:
                raise UserError(f"{run} and {seen[category]} are both {category} runs: give one run per category.")
            seen[category] = run
            root = args.root or Path(config["dataset"]["root"]).expanduser()
            count = write_category(
                model,
                config["image_size"],
                root,
                category,
                args.out,
                args.batch,
                args.device,
                None if args.compression == "none" else args.compression,
            )
            print(f"{category}: {count} maps and segmentations from {run}")
        found, missing = problems(args.out, root)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if found:
        print("The server would refuse this folder:\n  " + "\n  ".join(found), file=sys.stderr)
        return 1
    if missing:
        print(f"{args.out}: {8 - len(missing)} of 8 categories; still missing: {', '.join(missing)}.")
        if args.archive:
            print("error: --archive packs a complete submission only.", file=sys.stderr)
            return 1
        return 0
    print(f"{args.out}: complete, all 8 categories." + (f" Packed: {archive(args.out)}" if args.archive else ""))
    return 0
