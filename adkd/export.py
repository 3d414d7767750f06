"""`python -m adkd.export <run folder or .ckpt> [--format onnx|torchscript] [--out FILE]`.

Writes a model that takes a batch of resized RGB images in [0, 1] (any batch size) and returns
the smoothed anomaly map, the image score and both normalised around the threshold (0.5), with
the input normalisation, the blur and the thresholds inside. The export ends with a parity check
on test images of the run's own dataset (random images where that is not at hand): the exported
model's maps and scores must match the checkpoint's to ``--tolerance`` (relative to the largest
value), or the export fails and prints the differences (the normalised outputs are reported too).

ONNX goes through torch's dynamo exporter (opset 18), which handles DHKD's FFT filter and
normalizing flow and ADPS's patch split; TorchScript through tracing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from adkd.errors import UserError
from adkd.inference import OUTPUTS, Deployable, OnnxModel, checkpoint_path, for_export, load_model

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


def default_path(source: Path, fmt: str) -> Path:
    """<run folder>/export/model.onnx (or next to a bare checkpoint)."""
    run_folder = source if source.is_dir() else checkpoint_path(source).parent.parent
    return run_folder / "export" / f"model{SUFFIX[fmt]}"


def parity_images(config: dict, n: int = 8) -> tuple[torch.Tensor, str]:
    """Up to ``n`` test images of the run's dataset, as the model takes them; random ones if the
    dataset is not at hand where the export runs."""
    from hydra.utils import instantiate

    size = int(config["image_size"])
    try:
        datamodule = instantiate({**config["dataset"], "cache": False, "limit_test": n})
        datamodule.prepare_data()
        datamodule.setup("test")
        images = torch.stack([datamodule.test_set[i]["image"] for i in range(min(n, len(datamodule.test_set)))])
        return images, f"{len(images)} test images of {config.get('dataset_name')}/{datamodule.category}"
    except UserError:
        return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)), f"{n} random images"


def export(source: Path, fmt: str = "onnx", out: Path | None = None, tolerance: float = 1e-4) -> tuple[Path, dict]:
    """Export and check parity; returns the file and the largest differences per output."""
    model, config = load_model(source)
    deployable = Deployable(model.to(memory_format=torch.contiguous_format)).eval()
    out = Path(out or default_path(source, fmt))
    out.parent.mkdir(parents=True, exist_ok=True)
    images, described = parity_images(config)
    example = images[:2]
    with torch.no_grad():
        reference = deployable(images)  # what the checkpoint computes, before any export-friendly switch
    for_export(deployable)
    if fmt == "onnx":
        _export_onnx(deployable, example, out, config, model)
        exported = OnnxModel(out)
    elif fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(deployable, example)
        traced.save(str(out))
        exported = torch.jit.load(str(out))
    else:
        raise UserError(f"Unknown export format {fmt!r}: onnx or torchscript.")
    with torch.no_grad():
        got = exported(images)
    differences = {}
    for name, ref, value in zip(OUTPUTS, reference, got, strict=True):
        finite = torch.isfinite(ref)
        if not finite.any():  # normalised outputs of a model that was never calibrated
            continue
        scale = float(ref[finite].abs().max().clamp_min(1.0))
        differences[name] = float((value[finite].float() - ref[finite]).abs().max()) / scale
    # The normalised outputs are a fixed function of these two, and amplify their rounding where a
    # threshold sits close to the lowest validation value: the raw outputs decide parity.
    failed = {k: v for k, v in differences.items() if v > tolerance and k in ("anomaly_map", "pred_score")}
    report = ", ".join(f"{k} {v:.2e}" for k, v in differences.items())
    if failed:
        out.unlink(missing_ok=True)
        raise UserError(
            f"Exported {fmt} model differs from the checkpoint on {described}: {report} "
            f"(largest difference / largest value; tolerance {tolerance:g}). Nothing was written."
        )
    print(f"Parity on {described}: {report} (tolerance {tolerance:g})")
    return out, differences


def _export_onnx(deployable: Deployable, example: torch.Tensor, out: Path, config: dict, model) -> None:  # noqa: ANN001
    import onnx

    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(deployable, (example,), str(out), input_names=["images"], output_names=list(OUTPUTS),
                      dynamic_shapes=({0: batch},), dynamo=True, opset_version=18, verbose=False)  # fmt: skip
    proto = onnx.load(str(out))
    metadata = {"image_size": str(config["image_size"]), "method": str(config.get("method_name")),
                "image_threshold": str(float(model.post.image_threshold)),
                "pixel_threshold": str(float(model.post.pixel_threshold))}  # fmt: skip
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    external = out.with_name(out.name + ".data")
    external.unlink(missing_ok=True)  # the exporter's weights file: they go into the one file below
    large = proto.ByteSize() > 2**31 - 2**20  # protobuf's 2 GB limit: bigger models keep a weights file
    onnx.save(proto, str(out), save_as_external_data=large, location=external.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adkd.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("model", type=Path, help="a run folder (with checkpoints/last.ckpt) or a .ckpt file")
    parser.add_argument("--format", choices=sorted(SUFFIX), default="onnx")
    parser.add_argument("--out", type=Path, default=None, help="default: <run folder>/export/model.onnx|.pt")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    try:
        path, _ = export(args.model, args.format, args.out, args.tolerance)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
