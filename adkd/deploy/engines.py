"""The one inference path that predict, export and the benchmark share: [0, 1] RGB images in;
smoothed anomaly map, image score and both normalised around the threshold (0.5) out.

:class:`Deployable` is that path as a plain ``nn.Module`` (the method's network: input
normalisation inside its backbone; then :class:`~adkd.methods.components.postprocess.PostProcessor`),
so the eager model and the exported one compute the same graph. :class:`OnnxModel` and
:class:`OpenVinoModel` run an exported file behind the same call.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from adkd.deploy import trust
from adkd.errors import CheckpointError, ConfigError
from adkd.methods.base import ExportForm

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
    for sub in module.modules():
        if isinstance(sub, ExportForm):
            sub.use_export_form()
    return module


class OnnxModel:
    """An exported model under ONNX Runtime, called like :class:`Deployable` (torch tensors in and out).

    Its metadata (image size, thresholds, the checkpoint it came from) is checked like any value
    read from a file (:mod:`adkd.deploy.trust`), and so are its external weights files: they must lie
    beside it."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        import onnxruntime as ort

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
            raise CheckpointError(
                f"{path} carries no adkd metadata (image_size): was it exported by adkd.deploy.export?"
            )
        self.image_size = trust.image_size(self.metadata["image_size"], path)
        for key in ("image_threshold", "pixel_threshold", "image_floor", "pixel_floor"):  # None where absent
            setattr(self, key, trust.threshold(self.metadata.get(key, "nan"), key, path))

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.session.run(None, {"images": images.detach().cpu().float().contiguous().numpy()})
        return tuple(torch.from_numpy(o) for o in outputs)


class OpenVinoModel:
    """An OpenVINO IR (``adkd.deploy.export --format openvino``) on the CPU, called like :class:`Deployable`.

    It computes in the precision it was exported for (``precision`` in its metadata): float32 for
    fp32 and int8 (the layers NNCF left in float), float16 where the CPU supports it for fp16; never
    OpenVINO's CPU default (bf16 where the CPU has it). Its metadata is checked as ONNX's is."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        import openvino as ov

        if device != "cpu":
            raise ConfigError(
                f"--device {device} with --engine openvino: adkd runs OpenVINO on the CPU; use --device cpu."
            )
        if path.suffix != ".xml" or not path.with_suffix(".bin").is_file():
            raise CheckpointError(f"{path}: an OpenVINO model is an .xml file with its .bin beside it.")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as err:  # noqa: BLE001 - not an IR, a broken one
            raise CheckpointError(f"Cannot load {path} with OpenVINO: {str(err).splitlines()[0][:200]}") from err
        self.metadata = openvino_metadata(model)
        if "image_size" not in self.metadata:
            raise CheckpointError(
                f"{path} carries no adkd metadata (image_size): was it exported by adkd.deploy.export?"
            )
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
    """The adkd metadata an OpenVINO model carries in its rt_info (as :func:`adkd.deploy.export.metadata` wrote it)."""
    return {
        key: str(model.get_rt_info(["adkd", key]).astype(str)) for key in _OV_KEYS if model.has_rt_info(["adkd", key])
    }


_OV_KEYS = (
    "image_size",
    "method",
    "image_threshold",
    "pixel_threshold",
    "image_floor",
    "pixel_floor",
    "checkpoint_sha256",
    "checkpoint_epoch",
    "checkpoint_step",
    "threshold_choice",
    "precision",
    "category",
)


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
