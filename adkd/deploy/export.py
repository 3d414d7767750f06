"""Export behind ``adkd export``: ONNX and TorchScript with the parity check (what an export holds
and how it is checked: the command's help, :mod:`adkd.cli.export`; OpenVINO: :mod:`adkd.deploy.openvino`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from adkd.deploy import operating_point, trust
from adkd.deploy.checkpoints import checkpoint_path, load_model
from adkd.deploy.engines import OUTPUTS, Deployable, OnnxModel, for_export, openvino_metadata
from adkd.deploy.trust import file_digest
from adkd.errors import UserError, user_error_in

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


def default_path(source: Path, fmt: str, category: str | None = None) -> Path:
    """<run folder>/export/model.onnx (or next to a bare checkpoint); a unified run's ``category``:
    <run folder>/export/<category>/model.onnx."""
    run_folder = source if source.is_dir() else checkpoint_path(source).parent.parent
    return run_folder / "export" / (category or "") / f"model{SUFFIX[fmt]}"


def export_origin(model_path: Path) -> tuple[Path | None, str | None]:
    """The checkpoint of the run folder an export file lies in (``<run>/export/model.onnx``, or a
    unified run's ``<run>/export/<category>/model.onnx``) and that category; None where it lies elsewhere."""
    parent = model_path.parent
    if parent.name == "export":
        run, category = parent.parent, None
    elif parent.parent.name == "export":
        run, category = parent.parent.parent, parent.name
    else:
        return None, None
    checkpoint = run / "checkpoints" / "last.ckpt"
    return (checkpoint, category) if checkpoint.is_file() else (None, None)


def parity_images(config: dict, n: int = 8) -> tuple[torch.Tensor, str]:
    """Up to ``n`` test images of the run's dataset, as the model takes them; random ones if the
    dataset is not at hand where the export runs (it is never downloaded or generated here: the
    dataset config comes from the checkpoint, a file that may come from elsewhere)."""
    from hydra.utils import instantiate

    size = trust.image_size(config.get("image_size"), config["checkpoint"]["path"])
    dataset = trust.dataset_config(config, config["checkpoint"]["path"])
    try:
        datamodule = instantiate({**dataset, "cache": False, "limit_test": n})
        datamodule.setup("test")  # no prepare_data: an export never downloads or generates data
        images = torch.stack([datamodule.test_set[i]["image"] for i in range(min(n, len(datamodule.test_set)))])
        return images, f"{len(images)} test images of {config.get('dataset_name')}/{datamodule.category}"
    except Exception as err:  # noqa: BLE001 - Hydra wraps what a datamodule raises
        if user_error_in(err) is None:
            raise
        return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)), f"{n} random images"


def parity_tolerance(model: torch.nn.Module) -> float:
    """1e-4, or the looser bound a network declares (``export_tolerance``, with its reason)."""
    return max(1e-4, float(getattr(model.network, "export_tolerance", 0.0)))


def export(
    source: Path,
    fmt: str = "onnx",
    out: Path | None = None,
    tolerance: float | None = None,
    category: str | None = None,
) -> tuple[Path, dict]:
    """Export and check parity; returns the file and the largest differences per output.
    ``category``: which of a unified model's categories (its thresholds) the export carries."""
    model, config = load_model(source, category=category)
    tolerance = tolerance or parity_tolerance(model)
    if not model.post.calibrated:
        print(
            f"warning: {unfinished(config)}: the export's normalised outputs are NaN, and its users have no threshold.",
            file=sys.stderr,
        )
    deployable = Deployable(model.to(memory_format=torch.contiguous_format)).eval()
    out = Path(out or default_path(source, fmt, config["checkpoint"].get("category")))
    out.parent.mkdir(parents=True, exist_ok=True)
    images, described = parity_images(config)
    example = images[:2]
    with torch.no_grad():
        reference = deployable(images)  # what the checkpoint computes, before any export-friendly switch
    for_export(deployable)
    try:
        exported = _write(fmt, deployable, example, out, config, model)
    except KeyboardInterrupt:  # Ctrl-C mid-write: no half-written file is left to be taken for an export
        out.unlink(missing_ok=True)
        out.with_name(out.name + ".data").unlink(missing_ok=True)
        raise
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
            f"(largest difference / largest value; tolerance {tolerance:g}). Nothing was written. "
            f"Differences of float rounding (below 1e-3) can be accepted with --tolerance."
        )
    print(f"Parity on {described}: {report} (tolerance {tolerance:g})")
    return out, differences


def _write(
    fmt: str, deployable: torch.nn.Module, example: torch.Tensor, out: Path, config: dict, model
) -> torch.nn.Module:  # noqa: ANN001
    """Write the export of ``deployable`` to ``out``; returns it, loaded back."""
    if fmt == "onnx":
        write_onnx(deployable, example, out, metadata(config, model))
        return OnnxModel(out)
    if fmt != "torchscript":
        raise UserError(f"Unknown export format {fmt!r}: onnx or torchscript.")
    import warnings

    with torch.no_grad(), warnings.catch_warnings():  # tracing's notes on constants: checked by the parity test
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*deprecated")
        traced = torch.jit.trace(deployable, example)
    traced.save(str(out), _extra_files={"adkd.json": json.dumps(metadata(config, model))})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*deprecated")
        return torch.jit.load(str(out))


def metadata(config: dict, model) -> dict[str, str]:  # noqa: ANN001
    """What travels with an exported model: its input size, its thresholds, and the checkpoint it
    was made from (digest, epoch, step) and the threshold choice it carries
    (:mod:`adkd.deploy.operating_point`), so that a later checkpoint or choice is never served by an older export;
    for a unified model, the category whose thresholds it carries ("" for a model of one category)."""
    origin = config["checkpoint"]
    category = origin.get("category")
    return {
        "image_size": str(config["image_size"]),
        "method": str(config.get("method_name")),
        "image_threshold": str(float(model.post.image_threshold)),
        "pixel_threshold": str(float(model.post.pixel_threshold)),
        "image_floor": str(float(model.post.image_floor)),
        "pixel_floor": str(float(model.post.pixel_floor)),
        "checkpoint_sha256": file_digest(Path(origin["path"])),
        "checkpoint_epoch": str(origin["epoch"]),
        "checkpoint_step": str(origin["global_step"]),
        "threshold_choice": operating_point.fingerprint(Path(origin["path"]), category),
        "category": category or "",
    }


def unfinished(config: dict) -> str:
    """How to say that a checkpoint's run never finished (it has no thresholds)."""
    origin, epochs = config["checkpoint"], config.get("max_epochs")
    # A checkpoint written at an epoch's end holds that epoch's index; one written when training ends, the count.
    done = "epochs unknown"
    if origin["epoch"] >= 0 and epochs:
        done = f"{min(origin['epoch'] + 1, epochs)} of {epochs} epochs"
    return (
        f"{origin['path']} is from a run that never finished training ({done}), so it has no threshold "
        "(finish the run with its command and resume=true)"
    )


def _properties(model_path: Path) -> dict[str, str]:
    """An export's adkd metadata: an ONNX file's metadata_props, an OpenVINO IR's rt_info."""
    if model_path.suffix == ".xml":
        import openvino as ov

        return openvino_metadata(ov.Core().read_model(str(model_path)))
    import onnx

    return {p.key: p.value for p in onnx.load(str(model_path), load_external_data=False).metadata_props}


def stale_export(model_path: Path, checkpoint: Path, category: str | None = None) -> str | None:
    """Why an ONNX or OpenVINO export does not come from ``checkpoint`` as it is now (None if it does);
    ``category``: the unified model's category it must carry."""
    try:
        props = _properties(model_path)
    except Exception:  # noqa: BLE001 - unreadable: the engine says so when it loads it
        return None
    made_from = props.get("checkpoint_sha256")
    if made_from is None:
        return f"{model_path} does not say which checkpoint it was exported from"
    if made_from != file_digest(checkpoint):
        return (
            f"{model_path} was exported from another checkpoint (epoch {props.get('checkpoint_epoch')}, step "
            f"{props.get('checkpoint_step')}) than {checkpoint}"
        )
    if props.get("category", "") != (category or ""):
        return f"{model_path} carries the thresholds of category {props.get('category')!r}, not {category!r}"
    if props.get("threshold_choice", "") != operating_point.fingerprint(checkpoint, category):
        return (
            f"{model_path} was exported before the threshold in "
            f"{operating_point.sidecar_path(checkpoint, category)} was chosen"
        )
    return None


def current_onnx(source: Path, category: str | None = None) -> Path:
    """The run's ONNX export (``export/model.onnx``; a unified run's ``category``:
    ``export/<category>/model.onnx``), exported again first where it is missing or does not come
    from the checkpoint and threshold choice as they are now."""
    checkpoint = checkpoint_path(source)
    path = default_path(source, "onnx", category)
    why = stale_export(path, checkpoint, category) if path.is_file() else f"{path} does not exist yet"
    if why:
        print(f"Exporting {checkpoint} to ONNX: {why}.", file=sys.stderr)
        export(source, "onnx", path, category=category)
    return path


def write_onnx(deployable: torch.nn.Module, example: torch.Tensor, out: Path, properties: dict[str, str]) -> None:
    """The one ONNX export call (dynamo, opset 18, any batch size), with ``properties`` as the
    model's metadata (``image_size`` at least: :class:`~adkd.deploy.engines.OnnxModel` reads it)."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        deployable,
        (example,),
        str(out),
        input_names=["images"],
        output_names=list(OUTPUTS),
        dynamic_shapes=({0: batch},),
        dynamo=True,
        opset_version=18,
        verbose=False,
    )
    proto = onnx.load(str(out))
    for key, value in properties.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    external = out.with_name(out.name + ".data")
    external.unlink(missing_ok=True)  # the exporter's weights file: they go into the one file below
    large = proto.ByteSize() > 2**31 - 2**20  # protobuf's 2 GB limit: bigger models keep a weights file
    onnx.save(proto, str(out), save_as_external_data=large, location=external.name)
