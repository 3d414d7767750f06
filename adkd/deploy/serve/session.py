"""What ``adkd.deploy.serve`` holds for one run, loaded once: the engine, the operating point, and the
run's own test and validation images with their scores and maps.

Every engine gives the raw map and score (:class:`~adkd.deploy.engines.Deployable`'s first two
outputs); decisions and normalised values come from the run's
:class:`~adkd.methods.components.postprocess.PostProcessor` here, so that a threshold moved on the page
applies to every engine at once.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from adkd.data.dataset import AnomalyDataset, read_image, resized
from adkd.data.records import Record
from adkd.deploy import operating_point, trust
from adkd.deploy.checkpoints import load_model
from adkd.deploy.engines import Deployable
from adkd.deploy.predict import exported_model
from adkd.deploy.serve import DEFAULT_MAX_PIXELS
from adkd.errors import UserError, user_error_in
from adkd.report.panels import overlay

log = logging.getLogger(__name__)

SPLITS = ("test", "validation")
MAP_MEMORY = 256 * 2**20  # maps kept (float16) up to this size; beyond, an overlay computes its own
DECODERS = min(4, os.cpu_count() or 1)  # images decoded at once (the cores are the limit anyway)


@dataclass
class Scored:
    """One of the run's images: where it is, what it is, and what the model made of it."""

    split: str
    index: int
    path: Path
    label: int
    defect: str
    mask_path: Path | None
    score: float


class Session:
    """One run behind the app: load the model once, score its images once, decide per request.

    ``engine``: ``torch`` (the checkpoint), ``onnx`` or ``openvino`` (of ``precision``): the run's
    export, exported again where it does not come from the checkpoint and threshold as they are now.
    ``category``: for a unified model (``category=all``), the category served: its thresholds, its
    images, its saved threshold choice."""

    def __init__(
        self,
        source: Path,
        engine: str = "torch",
        device: str = "cpu",
        batch: int = 8,
        precision: str = "fp32",
        category: str | None = None,
    ) -> None:
        module, self.config = load_model(source, device, category)
        self.category = self.config["checkpoint"].get("category")  # a unified model's category, or None
        self.source, self.device, self.batch = source, device, batch
        self.checkpoint = Path(self.config["checkpoint"]["path"])
        self.post = copy.deepcopy(module.post).cpu()  # decisions here, on the CPU, whatever runs the model
        self.calibrated = self.config["checkpoint"].get(
            "calibrated_image_threshold", _number(self.post.image_threshold)
        )
        self.image_size = int(self.config["image_size"])
        if engine == "torch":
            deployable = Deployable(module).eval()
            self._engine = lambda images: deployable(images.to(device))[:2]
        elif engine in ("onnx", "openvino"):
            exported, _ = exported_model(source, engine, precision, device, self.category)
            self._engine = lambda images: exported(images)[:2]
            engine = f"{engine} {precision}" if engine == "openvino" else engine
        else:
            raise UserError(f"--engine {engine!r}: torch, onnx or openvino.")
        self.engine_name = engine
        self._lock = threading.Lock()  # one forward pass at a time: the cores are the model's
        self._choosing = threading.Lock()
        self._decoding = threading.BoundedSemaphore(DECODERS)
        self.max_pixels = DEFAULT_MAX_PIXELS
        self.stopping = threading.Event()  # set when the server is asked to stop: long requests end
        self.images: dict[str, list[Scored]] = {split: [] for split in SPLITS}
        self._maps: dict[str, list[torch.Tensor]] = {}
        self.images_note = self._score_run_images()

    # -- the operating point --------------------------------------------------------------------
    @property
    def threshold(self) -> float | None:
        return _number(self.post.image_threshold)

    @property
    def pixel_threshold(self) -> float | None:
        return _number(self.post.pixel_threshold)

    def choose(self, image_threshold: object) -> Path:
        """Keep ``image_threshold`` for this run (:mod:`adkd.deploy.operating_point`); used from now on.
        Checked before anything is written (a UserError says what is expected); concurrent choices
        take turns, so the one in use is the one last saved."""
        value = operating_point.check_choice(image_threshold)
        with self._choosing:
            try:
                path = operating_point.save(self.checkpoint, value, self.calibrated, self.category)
            except OSError as err:  # a read-only or full disk: the choice stays as it was
                raise UserError(
                    f"Cannot save the threshold beside {self.checkpoint} ({err.strerror or err}): "
                    "nothing was changed. The run's checkpoints folder must be writable."
                ) from err
            self.post.set_thresholds(image=value)
        log.info("Image threshold %.6g saved to %s", value, path)
        return path

    # -- scoring --------------------------------------------------------------------------------
    def infer(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw maps (B,1,H,W) and scores (B,) on the CPU, for [0, 1] images at the model's size."""
        with self._lock, torch.no_grad():
            anomaly_map, score = self._engine(images)
        return anomaly_map.float().cpu(), score.float().cpu()

    def predict_bytes(self, data: bytes, name: str, mask: bool = False) -> dict:
        """One uploaded image: score, normalised score, decision, threshold (and the predicted
        region as a PNG at the image's own size, base64, with ``mask``)."""
        return self.predict_file(io.BytesIO(data), name, mask)

    def predict_file(self, file: Path | BinaryIO, name: str, mask: bool = False) -> dict:
        """:meth:`predict_bytes` of an image file or stream. One whose header declares more than
        ``max_pixels`` is refused before it is decoded (ImageTooLargeError), and at most
        ``DECODERS`` images are decoded at once: the memory a burst of requests takes is bounded
        by about DECODERS x 12 bytes x max_pixels, whatever is sent."""
        with self._decoding:
            image = read_image(file, name, self.max_pixels)
            size = image.size
            tensor = resized(image, (self.image_size, self.image_size)).float()[None] / 255
            del image
        anomaly_map, score = self.infer(tensor)
        answer = self.decide(float(score[0]))
        answer["image_size"] = list(size)
        if mask:
            with self._decoding:
                answer["mask_png"] = self.mask_png(anomaly_map[0, 0], size)
        return answer

    def decide(self, score: float) -> dict:
        threshold = self.threshold
        answer = {
            "score": score,
            "threshold": threshold,
            "normalized_score": None,
            "decision": "no threshold",
            "anomalous": None,
        }
        if threshold is not None:
            normalized = self.post.normalize(torch.zeros(1), torch.tensor([score]))[1]
            anomalous = score > threshold
            value = float(normalized[0])
            answer.update(
                normalized_score=value if math.isfinite(value) else None,
                anomalous=anomalous,
                decision="anomalous" if anomalous else "normal",
            )
        return answer

    def mask_png(self, anomaly_map: torch.Tensor, size: tuple[int, int]) -> str | None:
        """The predicted region (map above the pixel threshold) at ``size`` (W, H), as base64 PNG."""
        import base64

        import torch.nn.functional as F
        from PIL import Image

        if self.pixel_threshold is None:
            return None
        full = F.interpolate(anomaly_map[None, None], size=(size[1], size[0]), mode="bilinear", align_corners=False)
        region = (full[0, 0] > self.pixel_threshold).numpy().astype(np.uint8) * 255
        buffer = io.BytesIO()
        Image.fromarray(region).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    def _score_run_images(self) -> str | None:
        """Score the run's test and validation images once; None, or why there are none."""
        from hydra.utils import instantiate
        from tqdm.auto import tqdm

        dataset = trust.dataset_config(self.config, self.checkpoint)
        try:
            datamodule = instantiate({**dataset, "cache": False})  # never downloads or generates (trust)
            records = datamodule.checked_records()
        except Exception as err:  # noqa: BLE001 - Hydra wraps what a datamodule raises
            why = user_error_in(err)
            if why is None:
                raise
            return f"The run's images are not at hand here ({str(why).splitlines()[0]}): only new images can be scored."
        chosen = {"test": records["test"], "validation": records["calibration"]}
        total = sum(len(r) for r in chosen.values())
        keep_maps = total * self.image_size**2 * 2 <= MAP_MEMORY
        with tqdm(total=total, unit="image", desc="scoring the run's images") as bar:
            for split, split_records in chosen.items():
                data = AnomalyDataset(split_records, self.image_size)
                self._maps[split] = []
                for start in range(0, len(data), self.batch):
                    samples = [data[i] for i in range(start, min(start + self.batch, len(data)))]
                    maps, scores = self.infer(torch.stack([s["image"] for s in samples]))
                    for offset, (score, anomaly_map) in enumerate(zip(scores.tolist(), maps, strict=True)):
                        record = split_records[start + offset]
                        self.images[split].append(
                            Scored(
                                split,
                                start + offset,
                                record.image_path,
                                record.gt_label,
                                record.defect,
                                record.mask_path,
                                score,
                            )
                        )
                        if keep_maps:
                            self._maps[split].append(anomaly_map[0].half())
                    bar.update(len(samples))
        return None

    def overlay_png(self, split: str, index: int) -> bytes:
        """image | map | predicted region (and truth) for one of the run's images, as PNG bytes."""
        item = self.images[split][index]
        sample = AnomalyDataset([Record(item.path, item.label, item.mask_path, item.defect)], self.image_size)[0]
        maps = self._maps.get(split) or []
        anomaly_map = maps[index].float() if index < len(maps) else self.infer(sample["image"][None])[0][0, 0]
        normalized = self.post.normalize(anomaly_map[None, None], torch.zeros(1))[0][0, 0]
        if self.pixel_threshold is None:
            normalized = None
        buffer = io.BytesIO()
        truth = sample["gt_mask"][0].numpy() > 0.5 if item.mask_path is not None else None
        overlay(
            sample["image"].permute(1, 2, 0).numpy(),
            None if normalized is None else normalized.numpy(),
            f"{item.path.name}: score {item.score:.4g}",
            buffer,
            truth=truth,
        )
        return buffer.getvalue()

    def describe(self) -> dict:
        config = self.config
        return {
            "method": config.get("method_name"),
            "dataset": config.get("dataset_name"),
            "category": config.get("category"),
            "unified": self.category is not None,
            "image_size": self.image_size,
            "engine": self.engine_name,
            "device": self.device,
            "checkpoint": str(self.checkpoint),
            "threshold": self.threshold,
            "calibrated_threshold": self.calibrated,
            "pixel_threshold": self.pixel_threshold,
            "images_note": self.images_note,
        }


def _number(value: torch.Tensor) -> float | None:
    number = float(value)
    return None if number != number else number
