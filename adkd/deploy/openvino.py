"""OpenVINO IR of a run (``adkd export <run> --format openvino [--precision fp32|fp16|int8]``).

Converted from the run's ONNX export (itself checked against the checkpoint), with the same
metadata (image size, thresholds, the checkpoint and threshold choice it comes from) in the IR's
``rt_info``. Three precisions, each named for what it computes in:

- ``fp32``: float32 weights, and OpenVINO told to compute in float32 (its CPU default is bf16
  where the CPU has it, which moves maps by ~1e-2: that is not fp32). Parity with the checkpoint
  to 1e-4, as ONNX.
- ``fp16``: float16 weights and float16 compute where the CPU supports it (f32 elsewhere). Parity
  reported and held to 1e-2.
- ``int8``: NNCF post-training quantisation (weights and activations) of the networks'
  convolutions, calibrated on up to ``calibration_images`` of the run's training images; what
  computes the map from the features stays in float (:data:`FLOAT_OPS`). Its raw outputs drift by
  design, so it is
  checked where it matters: the test split's image and pixel AUROC may fall at most ``max_drop``
  (0.5 point) below the checkpoint's, or the export fails and says by how much.

:class:`~adkd.deploy.engines.OpenVinoModel` runs the result behind the same call as the other engines.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from adkd.deploy import trust
from adkd.deploy.checkpoints import checkpoint_path, load_model
from adkd.deploy.engines import Deployable, OpenVinoModel
from adkd.deploy.export import current_onnx, default_path, metadata, parity_images, stale_export, unfinished
from adkd.errors import UserError, user_error_in
from adkd.metrics import AnomalyMetrics

PRECISIONS = ("fp32", "fp16", "int8")
FP16_TOLERANCE = 1e-2
MAX_AUROC_DROP = 0.005


def openvino_path(source: Path, precision: str = "fp32", category: str | None = None) -> Path:
    """<run folder>/export/model.xml (model_fp16.xml, model_int8.xml); in export/<category>/ for a
    unified run's category."""
    onnx = default_path(source, "onnx", category)
    return onnx.with_name("model.xml" if precision == "fp32" else f"model_{precision}.xml")


def export_openvino(
    source: Path,
    precision: str = "fp32",
    out: Path | None = None,
    max_drop: float = MAX_AUROC_DROP,
    calibration_images: int = 300,
    tolerance: float | None = None,
    category: str | None = None,
) -> tuple[Path, dict]:
    """Write the IR and check it; returns the file and what the check measured. ``category``: which
    of a unified model's categories it carries the thresholds of (and is calibrated and checked on)."""
    import openvino as ov

    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: one of {', '.join(PRECISIONS)}.")
    module, config = load_model(source, category=category)
    if precision == "int8" and not module.post.calibrated:
        raise UserError(
            f"OpenVINO int8 needs the run's thresholds (its graph normalises around them): {unfinished(config)}."
        )
    category = config["checkpoint"].get("category")
    onnx = current_onnx(source, category)
    final = Path(out or openvino_path(source, precision, category))
    final.parent.mkdir(parents=True, exist_ok=True)
    # Written beside its place and moved there once checked: a model that fails its check leaves the
    # previous one as it was, and a process that has the previous one open keeps reading it.
    out = final.with_name(f".{final.stem}.{os.getpid()}.partial.xml")
    try:
        network = ov.convert_model(str(onnx))
        if precision == "int8":
            network = _quantize(network, config, calibration_images)
        save_ir(network, out, metadata(config, module), precision)
        del network
        if precision == "int8":
            measured = _check_auroc(source, module, config, out, max_drop)
        else:
            measured = _check_parity(module, config, out, precision, tolerance)
        os.replace(out.with_suffix(".bin"), final.with_suffix(".bin"))
        os.replace(out, final)
    finally:
        _remove(out)
    return final, measured


def _check_parity(module, config: dict, out: Path, precision: str, tolerance: float | None) -> dict:  # noqa: ANN001

    images, described = parity_images(config)
    with torch.no_grad():
        reference = Deployable(module).eval()(images)
    got = OpenVinoModel(out)(images)
    differences = {}
    for name, ref, value in zip(("anomaly_map", "pred_score"), reference, got, strict=False):
        scale = float(ref.abs().max().clamp_min(1.0))
        differences[name] = float((value.float() - ref).abs().max()) / scale
    tolerance = tolerance or (1e-4 if precision == "fp32" else FP16_TOLERANCE)
    report = ", ".join(f"{k} {v:.2e}" for k, v in differences.items())
    if max(differences.values()) > tolerance:
        kind = "float16" if precision == "fp16" else "float32"
        raise UserError(
            f"OpenVINO {precision} model differs from the checkpoint on {described}: {report} (largest "
            f"difference / largest value; tolerance {tolerance:g}). Nothing was written. {kind} "
            "rounding can be accepted with --tolerance."
        )
    print(f"OpenVINO {precision} parity on {described}: {report} (tolerance {tolerance:g})")
    return differences


def save_ir(network, out: Path, properties: dict[str, str], precision: str) -> None:  # noqa: ANN001
    """Write an OpenVINO model with adkd's metadata (``image_size`` at least) and its precision."""
    import openvino as ov

    for key, value in {**properties, "precision": precision}.items():
        network.set_rt_info(value, ["adkd", key])
    ov.save_model(network, str(out), compress_to_fp16=precision == "fp16")


def _remove(xml: Path) -> None:
    xml.unlink(missing_ok=True)
    xml.with_suffix(".bin").unlink(missing_ok=True)


def _datamodule(config: dict, **overrides):  # noqa: ANN202
    """The run's datamodule (checked config, never downloads), or a UserError saying it is not here."""
    from hydra.utils import instantiate

    dataset = trust.dataset_config(config, config["checkpoint"]["path"])
    try:
        datamodule = instantiate({**dataset, "cache": False, **overrides})
        datamodule.checked_records()
    except Exception as err:  # noqa: BLE001 - Hydra wraps what a datamodule raises
        why = user_error_in(err)
        if why is None:
            raise
        raise UserError(
            f"int8 needs the run's training images (to calibrate) and test images (to check): "
            f"{str(why).splitlines()[0]}"
        ) from err
    return datamodule


def _quantize(network, config: dict, calibration_images: int):  # noqa: ANN001, ANN202
    """NNCF post-training quantisation on the run's training images (as the model takes them)."""
    datamodule = _datamodule(config, limit_train=calibration_images)
    datamodule.setup("fit")
    images = datamodule.train_set
    print(
        f"Calibrating int8 on {len(images)} training images of {config.get('dataset_name')}/{datamodule.category}",
        file=sys.stderr,
    )
    return quantize(network, [images[i]["image"] for i in range(len(images))])


# What stays in float in an int8 model: everything but the networks' convolutions. These ops
# compute the anomaly map from the features (distances, normalisations, a memory bank's nearest
# neighbours, a flow's products) and the score is the maximum of that map: quantised, they round
# away the differences it is made of. Measured on textures/brick (test split, image AUROC, fp32 ->
# int8): with NNCF's defaults PatchCore fell from 100.0 to 50.0 and STFPM from 99.0 to 93.3; with
# only the map's blur kept in float, ADPS fell from 98.3 to 94.5 with it quantised and rose to 99.3
# without; with everything but the convolutions in float, STFPM gives 98.8 and ADPS 99.3.
FLOAT_OPS = (
    "MatMul",
    "Multiply",
    "Add",
    "Subtract",
    "Divide",
    "Power",
    "Sqrt",
    "ReduceSum",
    "ReduceMean",
    "ReduceL2",
    "ReduceMax",
    "NormalizeL2",
    "MVN",
    "Interpolate",
    "AvgPool",
    "MaxPool",
    "Concat",
)


def quantize(network, images) -> object:  # noqa: ANN001
    """``network``'s convolutions quantised by NNCF, calibrated on ``images`` ([0, 1] tensors
    (3,H,W)); the rest (:data:`FLOAT_OPS`, and the post-processing's blur: :func:`_blur`) left in float."""
    import nncf

    data = nncf.Dataset(images, lambda image: image[None].numpy())
    kept = nncf.IgnoredScope(names=_blur(network), types=list(FLOAT_OPS), validate=False)
    return nncf.quantize(network, data, subset_size=len(images), ignored_scope=kept)


def _blur(network) -> list[str]:  # noqa: ANN001
    """The post-processing's Gaussian blur: its convolutions are the graph's single-channel ones
    (1 x 1 x k x 1 and 1 x 1 x 1 x k kernels)."""
    return [
        op.get_friendly_name()
        for op in network.get_ordered_ops()
        if op.get_type_name() == "Convolution" and list(op.input(1).get_partial_shape().to_shape())[:2] == [1, 1]
    ]


def split_auroc(infer, datamodule) -> dict[str, float | None]:  # noqa: ANN001
    """Image and pixel AUROC of ``infer`` (images -> map, score, ...) on the datamodule's test split."""
    datamodule.setup("test")
    metrics = AnomalyMetrics(pixel=bool(datamodule.has_masks))
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            anomaly_map, score = infer(batch["image"])[:2]
            metrics.update(score, batch["gt_label"], anomaly_map, batch["gt_mask"])
    values = metrics.compute()
    return {k: values.get(k) for k in ("image_auroc", "pixel_auroc")}


def _check_auroc(source: Path, module, config: dict, out: Path, max_drop: float) -> dict:  # noqa: ANN001

    datamodule = _datamodule(config)
    reference = split_auroc(Deployable(module).eval(), datamodule)
    quantized = split_auroc(OpenVinoModel(out), datamodule)
    drops = {k: reference[k] - quantized[k] for k in reference if reference[k] is not None and quantized[k] is not None}
    report = ", ".join(f"{k} {100 * reference[k]:.2f} -> {100 * quantized[k]:.2f}" for k in drops)
    worst = max(drops, key=drops.get, default=None)
    if worst is not None and drops[worst] > max_drop:
        raise UserError(
            f"int8 loses {100 * drops[worst]:.2f} points of {worst} on the test split ({report}); at most "
            f"{100 * max_drop:g} allowed. Nothing was written: use fp32 or fp16."
        )
    print(f"int8 on the test split: {report} (at most {100 * max_drop:g} points lost allowed)")
    return {"reference": reference, "int8": quantized}


def current_openvino(source: Path, precision: str = "fp32", category: str | None = None) -> Path:
    """The run's OpenVINO IR of ``precision`` (a unified run's ``category``'s), exported again first
    where it is missing or does not come from the checkpoint and threshold choice as they are now."""
    checkpoint = checkpoint_path(source)
    path = openvino_path(source, precision, category)
    why = stale_export(path, checkpoint, category) if path.is_file() else f"{path} does not exist yet"
    if why:
        print(f"Exporting {checkpoint} to OpenVINO {precision}: {why}.", file=sys.stderr)
        export_openvino(source, precision, path, category=category)
    return path
