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

from adkd.errors import CheckpointError

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
    """Switch submodules that have an export-friendly form of the same computation to it (DHKD's
    spectral filter: DFT matrix products instead of torch.fft, which ONNX Runtime runs slowly)."""
    for sub in module.modules():
        if hasattr(sub, "dft"):
            sub.dft = "matmul"
    return module


def checkpoint_path(source: Path) -> Path:
    path = source / "checkpoints" / "last.ckpt" if source.is_dir() else source
    if not path.is_file():
        raise CheckpointError(
            f"No checkpoint at {path}: give a run folder (holding checkpoints/last.ckpt) or a .ckpt file."
        )
    return path


def load_model(source: Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """The trained LightningModule of a run folder or checkpoint, in inference mode, and its run config."""
    from hydra.utils import instantiate

    path = checkpoint_path(source)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - empty, truncated, foreign files
        raise CheckpointError(f"Cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    config = checkpoint.get("adkd_config") if isinstance(checkpoint, dict) else None
    if config is None:
        raise CheckpointError(f"{path} carries no adkd run config: was it written by adkd.run (this version)?")
    method = dict(config["method"])
    method["backbone"] = {**method["backbone"], "pretrained": False, "weights": None}  # weights: the checkpoint's
    if "synthesis" in method:  # training-only; its source folder need not exist where the model is used
        method["synthesis"] = {**method["synthesis"], "source": None}
    try:
        model = instantiate(method, _convert_="all")
        model.load_state_dict(checkpoint["state_dict"])
    except Exception as err:  # noqa: BLE001 - a config or weights this version of adkd cannot rebuild
        cause = err.__cause__ or err
        raise CheckpointError(
            f"Cannot rebuild the model of {path} from the config inside it ({type(cause).__name__}: "
            f"{str(cause).splitlines()[0][:200]}). Was it written by another version of adkd?"
        ) from err
    return model.to(device).prepare_for_inference(), config


class OnnxModel:
    """An exported model under ONNX Runtime, called like :class:`Deployable` (torch tensors in and out)."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        import onnxruntime as ort

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # ONNX Runtime's threads spin between runs by default: CPU taken from everything else
        # (the data loader, figures, a torch model measured beside it).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        self.metadata = self.session.get_modelmeta().custom_metadata_map

    @property
    def image_size(self) -> int:
        return int(self.metadata["image_size"])

    @property
    def image_threshold(self) -> float | None:
        value = float(self.metadata.get("image_threshold", "nan"))
        return None if value != value else value

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.session.run(None, {"images": images.detach().cpu().float().contiguous().numpy()})
        return tuple(torch.from_numpy(o) for o in outputs)
