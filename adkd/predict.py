"""`python -m adkd.predict <run folder or .ckpt> <image | folder | glob> ...`: score new images.

Needs nothing but the checkpoint: it carries the resolved config (method, backbone, image size),
the weights, and the thresholds set after training. Writes into ``--out``:

- ``predictions.csv``: image_path, pred_score, normalized_score (0.5 = the threshold), pred_label
  (1 = anomalous), decision, image_threshold;
- ``figures/``: per image, the image | its anomaly map (normalised, with a colour bar) | the
  predicted region, with the score and the decision in the title (``--no-figures`` to skip);
- ``masks/`` with ``--masks``: the predicted region as a binary PNG at the image's own size.

A folder is searched recursively; files that cannot be read are listed and skipped.
"""

from __future__ import annotations

import argparse
import csv
import glob
import sys
from pathlib import Path

from adkd.errors import UserError

FIELDS = ["image_path", "pred_score", "normalized_score", "pred_label", "decision", "image_threshold"]


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given, folders searched recursively (hidden ones skipped), glob patterns expanded."""
    from adkd.data.records import IMAGE_SUFFIXES

    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )  # fmt: skip
        elif path.is_file():
            found.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not matches:
                raise UserError(f"No image at {item}: not a file, a folder or a glob pattern that matches.")
            found += matches
    return list(dict.fromkeys(found))


class _Images:
    """Images resized to the model's input size; unreadable ones come back as their error."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, object, tuple[int, int] | str]:
        import torch

        from adkd.data.dataset import read_image, resized

        try:
            img = read_image(self.paths[index])
        except UserError as err:
            return index, None, str(err)
        return index, resized(img, (self.size, self.size)).to(torch.float32) / 255, img.size


def _collate(items: list) -> list:
    return items


def predict(infer, paths: list[Path], image_size: int, threshold: float | None, out: Path, batch: int = 8,  # noqa: ANN001
            figures: bool = True, masks: bool = False, workers: int = 0) -> tuple[list[dict], list[str]]:  # fmt: skip
    """Score ``paths`` with ``infer`` (a :class:`~adkd.inference.Deployable` or an
    :class:`~adkd.inference.OnnxModel`); returns the CSV rows and the skipped files with why."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    names = _unique_names(paths)
    rows, skipped = [], []
    loader = DataLoader(_Images(paths, image_size), batch_size=batch, num_workers=workers, collate_fn=_collate)
    with (out / "predictions.csv").open("w", newline="") as f, torch.no_grad(), \
            tqdm(total=len(paths), unit="image", desc="predict") as bar:  # fmt: skip
        writer = csv.DictWriter(f, fieldnames=FIELDS)  # rows written as they come: a stopped run keeps them
        writer.writeheader()
        for items in loader:
            good = [(i, img, size) for i, img, size in items if img is not None]
            skipped += [f"{paths[i]}: {why}" for i, img, why in items if img is None]
            if good:
                _, score, norm_map, norm_score = (t.cpu() for t in infer(torch.stack([img for _, img, _ in good])))
                for j, (i, image, size) in enumerate(good):
                    row = {"image_path": str(paths[i]), "pred_score": float(score[j]), "image_threshold": threshold,
                           "normalized_score": None, "pred_label": None, "decision": "no threshold"}  # fmt: skip
                    if threshold is not None:
                        anomalous = bool(score[j] > threshold)
                        row.update(normalized_score=float(norm_score[j]), pred_label=int(anomalous),
                                   decision="anomalous" if anomalous else "normal")  # fmt: skip
                    rows.append(row)
                    writer.writerow(row)
                    if figures:
                        _figure(image, norm_map[j, 0], row, out / "figures" / f"{names[i]}.png")
                    if masks and threshold is not None:
                        _mask(norm_map[j, 0], size, out / "masks" / f"{names[i]}_mask.png")
            f.flush()
            bar.update(len(items))
    return rows, skipped


def _unique_names(paths: list[Path]) -> list[str]:
    """File names for outputs: the path below the inputs' common folder, '/' -> '__'."""
    import os

    parents = [str(p.parent) for p in paths]
    common = Path(os.path.commonpath(parents)) if paths else Path()
    return [str(p.relative_to(common).with_suffix("")).replace("/", "__") for p in paths]


def _figure(image, region, row: dict, path: Path) -> None:  # noqa: ANN001
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    picture = image.permute(1, 2, 0).numpy()
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    axes[0].imshow(picture)
    axes[0].set_title(Path(row["image_path"]).name, fontsize=8)
    normalised = row["normalized_score"] is not None
    heat = axes[1].imshow(region.numpy(), cmap="jet", vmin=0, vmax=1)
    fig.colorbar(heat, ax=axes[1], fraction=0.046, pad=0.04)
    axes[1].set_title("anomaly map (normalised: 0.5 = threshold)", fontsize=8)
    axes[2].imshow(picture)
    if normalised:
        axes[2].contour(region.numpy(), levels=[0.5], colors="red", linewidths=1.2)
    axes[2].set_title("predicted region", fontsize=8)
    for ax in axes:
        ax.axis("off")
    score = f"score {row['pred_score']:.4g}"
    if row["normalized_score"] is not None:
        score += f" (normalised {row['normalized_score']:.2f})"
    fig.suptitle(f"{score}: {row['decision']}", fontsize=10, color="red" if row["pred_label"] else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _mask(region, size: tuple[int, int], path: Path) -> None:  # noqa: ANN001
    import torch.nn.functional as F
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    full = F.interpolate(region[None, None], size=(size[1], size[0]), mode="bilinear", align_corners=False)[0, 0]
    Image.fromarray(((full > 0.5).numpy() * 255).astype("uint8")).save(path)


def _engine(args: argparse.Namespace):  # noqa: ANN202
    """(infer, image size, image threshold) for the chosen engine."""
    if args.engine == "onnx" or args.model.suffix == ".onnx":
        from adkd.export import default_path, export
        from adkd.inference import OnnxModel

        path = args.model if args.model.suffix == ".onnx" else default_path(args.model, "onnx")
        if not path.is_file():
            export(args.model, "onnx", path)
        if args.threshold is not None:
            raise UserError("--threshold applies to the torch engine; an exported model carries its thresholds.")
        model = OnnxModel(path, args.device)
        return model, model.image_size, model.image_threshold
    from adkd.inference import Deployable, load_model

    module, config = load_model(args.model, args.device)
    if args.threshold is not None:
        module.post.set_thresholds(image=args.threshold)
    threshold = float(module.post.image_threshold) if module.post.calibrated else None
    deployable = Deployable(module)
    return (lambda images: deployable(images.to(args.device))), config["image_size"], threshold


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adkd.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("model", type=Path, help="a run folder (checkpoints/last.ckpt), a .ckpt, or an exported .onnx")
    parser.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output folder (default: ./predictions)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0, help="data loader processes")
    parser.add_argument(
        "--engine",
        choices=["torch", "onnx"],
        default="torch",
        help="onnx: the run's export/model.onnx under ONNX Runtime (exported first if missing)",
    )
    parser.add_argument("--threshold", type=float, default=None, help="image threshold, in the method's score units")
    parser.add_argument("--masks", action="store_true", help="also write the predicted regions as binary PNGs")
    parser.add_argument("--no-figures", dest="figures", action="store_false", help="skip the overlay figures")
    args = parser.parse_args(argv)
    try:
        paths = expand_inputs(args.inputs)
        if not paths:
            raise UserError(f"No images (png, jpg, bmp, tif) in {' '.join(args.inputs)}.")
        infer, image_size, threshold = _engine(args)
        rows, skipped = predict(infer, paths, image_size, threshold, args.out, args.batch,
                                args.figures, args.masks, args.workers)  # fmt: skip
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nInterrupted: {args.out / 'predictions.csv'} holds the images scored so far.", file=sys.stderr)
        return 130
    if threshold is None:
        print("warning: no threshold in this model: scores only (give --threshold)", file=sys.stderr)
    anomalous = sum(1 for r in rows if r["pred_label"] == 1)
    print(f"{len(rows)} images scored ({anomalous} anomalous), written to {args.out / 'predictions.csv'}")
    if skipped:
        print(f"{len(skipped)} files skipped (unreadable):\n  " + "\n  ".join(skipped), file=sys.stderr)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
