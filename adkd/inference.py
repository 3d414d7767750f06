"""The one inference path that predict, export and the benchmark share: [0, 1] RGB images in;
smoothed anomaly map, image score and both normalised around the threshold (0.5) out.

:class:`Deployable` is that path as a plain ``nn.Module`` (the method's network: input
normalisation inside its backbone; then :class:`~adkd.methods.postprocess.PostProcessor`), so the
eager model and the exported one compute the same graph. :class:`OnnxModel` runs an exported
file with ONNX Runtime behind the same call.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from adkd.errors import CheckpointError, ConfigError

OUTPUTS = ("anomaly_map", "pred_score", "normalized_map", "normalized_score")


class Deployable(nn.Module):
    """images (B,3,H,W) in [0, 1] -> anomaly_map (B,1,H,W), pred_score (B,), and the two normalised
    (0.5 = the threshold; NaN where the model was never calibrated)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.network, self.post = module.network, module.post

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        anomaly_map, pred_score = self.post(self.network.anomaly_map(images))
        normalized_map, normalized_score = self.post.normalize(anomaly_map, pred_score)
        return anomaly_map, pred_score, normalized_map, normalized_score


def for_export(module: nn.Module) -> nn.Module:
    """Switch submodules that declare an export-friendly form of the same computation to it
    (:class:`~adkd.methods.base.ExportForm`; DHKD's spectral filter: DFT matrix products instead of
    torch.fft, which ONNX Runtime runs slowly)."""
    from adkd.methods.base import ExportForm

    for sub in module.modules():
        if isinstance(sub, ExportForm):
            sub.use_export_form()
    return module


def checkpoint_path(source: Path) -> Path:
    path = source / "checkpoints" / "last.ckpt" if source.is_dir() else source
    if not path.is_file():
        raise CheckpointError(
            f"No checkpoint at {path}: give a run folder (holding checkpoints/last.ckpt) or a .ckpt file."
        )
    return path


def load_model(source: Path, device: str = "cpu", category: str | None = None) -> tuple[nn.Module, dict]:
    """The trained LightningModule of a run folder or checkpoint, in inference mode, and its run
    config (with ``checkpoint``: the file, its epoch and step). The stored config is
    checked by :mod:`adkd.trust` before anything is built from it. An image threshold chosen
    after training (:mod:`adkd.operating_point`) replaces the calibrated one.

    A unified model (``category=all``) holds thresholds per category and none of its own:
    ``category`` picks the one it decides with, and is required (a CheckpointError lists them).
    The config returned is then that category's view of the run (``category``, the dataset's
    ``category``: the images export and serve check and show are that category's), and
    ``checkpoint.category`` names it. A model of one category takes no ``category``."""
    from hydra.utils import instantiate

    from adkd import trust

    path = checkpoint_path(source)
    checkpoint = read_checkpoint(path)
    config = checkpoint.get("adkd_config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} carries no adkd run config: was it written by adkd.run (this version)?")
    method = trust.method_config(config, path)
    try:
        model = instantiate(method, _convert_="all")
        model.load_state_dict(checkpoint["state_dict"])
    except Exception as err:  # noqa: BLE001 - a config or weights this version of adkd cannot rebuild
        cause = err.__cause__ or err
        said = " ".join(line.strip() for line in str(cause).splitlines() if line.strip())  # whole, on one line
        raise CheckpointError(
            f"Cannot rebuild the model of {path} from the config inside it ({type(cause).__name__}: {said}). "
            "Was it written by another version of adkd?"
        ) from err
    from adkd.methods.base import CATEGORY_THRESHOLDS

    model.post.category_thresholds = trust.category_thresholds(checkpoint.get(CATEGORY_THRESHOLDS), path)
    config, picked = _for_category(model, config, category, path)
    origin = {"path": str(path), "epoch": int(checkpoint.get("epoch", -1)),
              "global_step": int(checkpoint.get("global_step", -1))}  # fmt: skip
    if picked:
        origin["category"] = picked
    from adkd import operating_point

    choice = operating_point.chosen(path, category=picked)
    if choice is not None:  # the engineer's choice (adkd.serve) over the calibrated one
        origin["calibrated_image_threshold"] = float(model.post.image_threshold)
        origin["chosen_threshold"] = str(operating_point.sidecar_path(path, picked))
        model.post.set_thresholds(image=choice)
    return model.to(device).prepare_for_inference(), {**config, "checkpoint": origin}


def model_categories(source: Path) -> list[str]:
    """The categories a unified model (trained with ``category=all``) holds thresholds for, in its
    order; empty for a model of one category."""
    from adkd import trust
    from adkd.methods.base import CATEGORY_THRESHOLDS

    path = checkpoint_path(source)
    return list(trust.category_thresholds(read_checkpoint(path).get(CATEGORY_THRESHOLDS), path))


def _for_category(model: nn.Module, config: dict, category: str | None, path: Path) -> tuple[dict, str | None]:
    """The run config as ``category``'s view of a unified run, with that category's thresholds in
    the model, and the category picked (None for a model of one category)."""
    from adkd.data.base import ALL_CATEGORIES

    kept, trained = model.post.category_thresholds, config.get("category")
    if trained != ALL_CATEGORIES:
        if category is not None:
            raise CheckpointError(f"{path} is a model of category {trained!r} alone; --category picks a category of "
                                  "a unified model (trained with category=all): leave it out.")  # fmt: skip
        return config, None
    if category is None:
        which = f"the categories {', '.join(kept)}" if kept else "every category of its dataset"
        raise CheckpointError(f"{path} is one model for {which} (trained with category=all), with thresholds for each "
                              "category: give the category of the images with --category.")  # fmt: skip
    if kept and category not in kept:
        raise CheckpointError(f"{path} has no category {category!r}: it holds thresholds for {', '.join(kept)}.")
    if kept:
        model.post.use(category)
    dataset = config.get("dataset")
    view = {**config, "category": category}
    return ({**view, "dataset": {**dataset, "category": category}} if isinstance(dataset, dict) else view), category


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's contents, tensors and plain data only (``weights_only``: no pickled code)."""
    import pickle
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any("/code/" in name for name in archive.namelist()):
                raise CheckpointError(
                    f"{path} is a TorchScript export, not a checkpoint: run it with torch.jit.load(path) on a "
                    "batch of RGB images in [0, 1] at its image size (it returns the map, the score and both "
                    "normalised), or give adkd.predict the run folder, its .ckpt, or an .onnx export."
                )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused something: code, or a foreign object
        raise CheckpointError(
            f"Refused {path}: it holds objects other than tensors and plain data, which adkd never unpickles "
            f"({str(err).splitlines()[-1][:160] if str(err) else 'UnpicklingError'}). Nothing in it was run."
        ) from err
    except Exception as err:  # noqa: BLE001 - empty, truncated, foreign files
        raise CheckpointError(f"Cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict).")
    return checkpoint


def file_digest(path: Path) -> str:
    """sha256 of a file: which checkpoint an export came from."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OnnxModel:
    """An exported model under ONNX Runtime, called like :class:`Deployable` (torch tensors in and out).

    Its metadata (image size, thresholds, the checkpoint it came from) is checked like any value
    read from a file (:mod:`adkd.trust`), and so are its external weights files: they must lie
    beside it."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        import onnxruntime as ort

        from adkd import trust

        _check_external_data(path)
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ConfigError(
                    f"--device {device} with --engine onnx needs ONNX Runtime's CUDA provider, and this "
                    f"onnxruntime has {', '.join(ort.get_available_providers())}: install onnxruntime-gpu, "
                    "or use --device cpu (or the torch engine)."
                )
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # ONNX Runtime's threads spin between runs by default: CPU taken from everything else
        # (the data loader, figures, a torch model measured beside it).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # noqa: BLE001 - not an ONNX file, a broken one, one from elsewhere
            raise CheckpointError(f"Cannot load {path} with ONNX Runtime: {str(err).splitlines()[0][:200]}") from err
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        if "image_size" not in self.metadata:
            raise CheckpointError(f"{path} carries no adkd metadata (image_size): was it exported by adkd.export?")
        self.image_size = trust.image_size(self.metadata["image_size"], path)
        for key in ("image_threshold", "pixel_threshold", "image_floor", "pixel_floor"):  # None where absent
            setattr(self, key, trust.threshold(self.metadata.get(key, "nan"), key, path))

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.session.run(None, {"images": images.detach().cpu().float().contiguous().numpy()})
        return tuple(torch.from_numpy(o) for o in outputs)


class OpenVinoModel:
    """An OpenVINO IR (``adkd.export --format openvino``) on the CPU, called like :class:`Deployable`.

    It computes in the precision it was exported for (``precision`` in its metadata): float32 for
    fp32 and int8 (the layers NNCF left in float), float16 where the CPU supports it for fp16; never
    OpenVINO's CPU default (bf16 where the CPU has it). Its metadata is checked as ONNX's is."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        import openvino as ov

        from adkd import trust

        if device != "cpu":
            raise ConfigError(f"--device {device} with --engine openvino: adkd runs OpenVINO on the CPU; "
                              "use --device cpu.")
        if path.suffix != ".xml" or not path.with_suffix(".bin").is_file():
            raise CheckpointError(f"{path}: an OpenVINO model is an .xml file with its .bin beside it.")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as err:  # noqa: BLE001 - not an IR, a broken one
            raise CheckpointError(f"Cannot load {path} with OpenVINO: {str(err).splitlines()[0][:200]}") from err
        self.metadata = openvino_metadata(model)
        if "image_size" not in self.metadata:
            raise CheckpointError(f"{path} carries no adkd metadata (image_size): was it exported by adkd.export?")
        self.image_size = trust.image_size(self.metadata["image_size"], path)
        for key in ("image_threshold", "pixel_threshold", "image_floor", "pixel_floor"):
            setattr(self, key, trust.threshold(self.metadata.get(key, "nan"), key, path))
        self.precision = self.metadata.get("precision", "fp32")
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        self.compute = "f16" if self.precision == "fp16" and "FP16" in capabilities else "f32"
        settings = {"INFERENCE_PRECISION_HINT": self.compute, "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        self.compiled = core.compile_model(model, "CPU", settings)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        results = self.compiled(images.detach().cpu().float().contiguous().numpy())
        return tuple(torch.from_numpy(results[output]) for output in self.compiled.outputs)


def openvino_metadata(model) -> dict[str, str]:  # noqa: ANN001
    """The adkd metadata an OpenVINO model carries in its rt_info (as :func:`adkd.export.metadata` wrote it)."""
    return {key: str(model.get_rt_info(["adkd", key]).astype(str)) for key in _OV_KEYS
            if model.has_rt_info(["adkd", key])}  # fmt: skip


_OV_KEYS = ("image_size", "method", "image_threshold", "pixel_threshold", "image_floor", "pixel_floor",
            "checkpoint_sha256", "checkpoint_epoch", "checkpoint_step", "threshold_choice", "precision", "category")


def _check_external_data(path: Path) -> None:
    """An ONNX file may name files that hold its weights; ONNX Runtime would read them wherever they
    point. adkd writes them beside the model, by name alone: anything else is refused."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - not an ONNX file
        raise CheckpointError(f"Cannot read {path} as an ONNX model: {type(err).__name__}") from err
    from onnx.external_data_helper import uses_external_data

    for tensor in _tensors(proto.graph):
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if Path(location).name != location or location in ("", ".", ".."):
            raise CheckpointError(
                f"Refused {path}: its weights are to be read from {location!r}, outside the model's folder. "
                "adkd's exports keep their weights beside the model."
            )


def _tensors(graph):  # noqa: ANN001, ANN202
    """Every tensor an ONNX graph holds: its initializers and its nodes' tensor attributes, subgraphs
    too. (onnx walks them the same way, but only in private helpers of onnx.external_data_helper.)"""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for subgraph in [*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs]:
                yield from _tensors(subgraph)
