"""What ``adkd.deploy.serve`` holds for one run, loaded once: the engine, the operating point (the
image threshold that decides, the pixel threshold that draws the region), and the run's own test
and validation images with their scores and maps.

Every engine gives the raw map and score (:class:`~adkd.deploy.engines.Deployable`'s first two
outputs); decisions and normalised values come from the run's
:class:`~adkd.methods.components.postprocess.PostProcessor` here, so that a threshold moved on the page
applies to every engine at once.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import math
import os
import secrets
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
from adkd.errors import ImageReadError, UserError, user_error_in

log = logging.getLogger(__name__)

SPLITS = ("test", "validation")
KEEP = object()  # Session.choose: the pixel threshold stays as it is
DECISION_FIELDS = [
    "split",
    "image_path",
    "gt_label",
    "defect",
    "pred_score",
    "normalized_score",
    "decision",
    "outcome",
    "image_threshold",
    "map_max",
    "region",
    "pixel_threshold",
]
MAP_MEMORY = 256 * 2**20  # maps kept (float16) up to this size; beyond, each request computes its own
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
    map_max: float  # the map's highest value: a region is drawn where the pixel threshold is below it


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
        self.calibrated_pixel = self.config["checkpoint"].get(
            "calibrated_pixel_threshold", _number(self.post.pixel_threshold)
        )
        self.pixel_chosen = "calibrated_pixel_threshold" in self.config["checkpoint"]  # saved with the image's
        self.pixel_floor = _number(self.post.pixel_floor)
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
        self.map_range: tuple[float, float] | None = None  # lowest and highest value of the run's maps
        self.token = secrets.token_hex(6)  # in the page's image URLs: another run on this port is not cached
        self.images_note = self._score_run_images()

    # -- the operating point --------------------------------------------------------------------
    @property
    def threshold(self) -> float | None:
        return _number(self.post.image_threshold)

    @property
    def pixel_threshold(self) -> float | None:
        return _number(self.post.pixel_threshold)

    def choose(self, image_threshold: object, pixel_threshold: object = KEEP) -> Path:
        """Keep ``image_threshold`` for this run, and ``pixel_threshold`` (left out: the pixel
        threshold in use stays, a chosen one saved again) (:mod:`adkd.deploy.operating_point`);
        both used from now on. Checked before anything is written (a UserError says what is
        expected); concurrent choices take turns, so the one in use is the one last saved."""
        value = operating_point.check_choice(image_threshold)
        if pixel_threshold is KEEP:
            pixel = self.pixel_threshold if self.pixel_chosen else None
        else:
            pixel = operating_point.check_choice(pixel_threshold, "pixel_threshold")
        with self._choosing:
            try:
                path = operating_point.save(
                    self.checkpoint, value, self.calibrated, self.category, pixel, self.calibrated_pixel
                )
            except OSError as err:  # a read-only or full disk: the choice stays as it was
                raise UserError(
                    f"Cannot save the threshold beside {self.checkpoint} ({err.strerror or err}): "
                    "nothing was changed. The run's checkpoints folder must be writable."
                ) from err
            self.post.set_thresholds(image=value, pixel=pixel)
            self.pixel_chosen = self.pixel_chosen or pixel is not None
        log.info("Image threshold %.6g, pixel threshold %s saved to %s", value, pixel, path)
        return path

    # -- scoring --------------------------------------------------------------------------------
    def infer(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw maps (B,1,H,W) and scores (B,) on the CPU, for [0, 1] images at the model's size."""
        with self._lock, torch.no_grad():
            anomaly_map, score = self._engine(images)
        return anomaly_map.float().cpu(), score.float().cpu()

    def predict_bytes(self, data: bytes, name: str, mask: bool = False, heatmap: bool = False) -> dict:
        """One uploaded image: score, normalised score, decision, threshold (and the predicted
        region as a PNG at the image's own size, base64, with ``mask``; the anomaly map at the
        model's size, with ``heatmap``)."""
        return self.predict_file(io.BytesIO(data), name, mask, heatmap)

    def predict_file(self, file: Path | BinaryIO, name: str, mask: bool = False, heatmap: bool = False) -> dict:
        """:meth:`predict_bytes` of an image file or stream (``heatmap``: also the raw map, see
        :func:`map_fields`). One whose header declares more than
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
        if heatmap:
            answer.update(map_fields(anomaly_map[0, 0]))
        return answer

    def decide(self, score: float) -> dict:
        threshold = self.threshold
        answer = {
            "score": score,
            "threshold": threshold,
            "pixel_threshold": self.pixel_threshold,
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
        lowest, highest = math.inf, -math.inf
        with tqdm(total=total, unit="image", desc="scoring the run's images") as bar:
            for split, split_records in chosen.items():
                data = AnomalyDataset(split_records, self.image_size)
                self._maps[split] = []
                for start in range(0, len(data), self.batch):
                    samples = [data[i] for i in range(start, min(start + self.batch, len(data)))]
                    maps, scores = self.infer(torch.stack([s["image"] for s in samples]))
                    for offset, (score, anomaly_map) in enumerate(zip(scores.tolist(), maps, strict=True)):
                        record = split_records[start + offset]
                        top = float(anomaly_map.max())
                        lowest, highest = min(lowest, float(anomaly_map.min())), max(highest, top)
                        self.images[split].append(
                            Scored(
                                split,
                                start + offset,
                                record.image_path,
                                record.gt_label,
                                record.defect,
                                record.mask_path,
                                score,
                                top,
                            )
                        )
                        if keep_maps:
                            self._maps[split].append(anomaly_map[0].half())
                    bar.update(len(samples))
        if math.isfinite(lowest) and math.isfinite(highest):
            self.map_range = (lowest, highest)
        return None

    def anomaly_map(self, split: str, index: int) -> torch.Tensor:
        """One of the run's images' raw anomaly map (H, W) at the model's size, float32."""
        maps = self._maps.get(split) or []
        if index < len(maps):
            return maps[index].float()
        return self.infer(self._sample(split, index)["image"][None])[0][0, 0]

    def truth_png(self, split: str, index: int, longest: int) -> bytes | None:
        """One of the run's images' ground-truth mask as a black and white PNG (any non-zero value
        of the mask file is anomalous), its longest side at most ``longest`` pixels (a pixel
        partly covered stays white: thin defects survive), or None where it has none."""
        from PIL import Image

        item = self.images[split][index]
        if item.mask_path is None:
            return None
        with self._decoding:
            try:
                with Image.open(item.mask_path) as img:
                    mask = img.convert("L").point(lambda v: 255 if v else 0)
            except (OSError, ValueError) as err:
                raise ImageReadError(f"Cannot read mask {item.mask_path}: {err}") from err
            if max(mask.size) > longest:
                scale = longest / max(mask.size)
                size = (max(1, round(mask.size[0] * scale)), max(1, round(mask.size[1] * scale)))
                mask = mask.resize(size, Image.BOX).point(lambda v: 255 if v else 0)
            buffer = io.BytesIO()
            mask.save(buffer, format="PNG")
        return buffer.getvalue()

    def _sample(self, split: str, index: int) -> dict:
        item = self.images[split][index]
        return AnomalyDataset([Record(item.path, item.label, item.mask_path, item.defect)], self.image_size)[0]

    def image_png(self, split: str, index: int, longest: int) -> bytes:
        """One of the run's images as a PNG, its longest side at most ``longest`` pixels (never
        enlarged): what the page draws the map over (the model saw it squeezed to a square)."""
        from PIL import Image

        with self._decoding:
            image = read_image(self.images[split][index].path)
            if max(image.size) > longest:
                image.thumbnail((longest, longest), Image.BILINEAR)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    def decisions(self, image_threshold: float | None = None, pixel_threshold: float | None = None) -> list[dict]:
        """Every scored image of the run with its decision at ``image_threshold`` and whether a
        region is drawn at ``pixel_threshold`` (left out: the thresholds in use)."""
        image_threshold = self.threshold if image_threshold is None else image_threshold
        pixel_threshold = self.pixel_threshold if pixel_threshold is None else pixel_threshold
        post = copy.deepcopy(self.post)
        if image_threshold is not None:
            post.set_thresholds(image=image_threshold)
        rows = []
        for split in SPLITS:
            items = self.images[split]
            normalized = post.normalize_score(torch.tensor([s.score for s in items], dtype=torch.float64)).tolist()
            for item, value in zip(items, normalized, strict=True):
                row = {
                    "split": split,
                    "image_path": str(item.path),
                    "gt_label": item.label,
                    "defect": item.defect,
                    "pred_score": item.score,
                    "normalized_score": "",
                    "decision": "no threshold",
                    "outcome": "",
                    "image_threshold": "" if image_threshold is None else image_threshold,
                    "map_max": item.map_max,
                    "region": "",
                    "pixel_threshold": "" if pixel_threshold is None else pixel_threshold,
                }
                if image_threshold is not None:
                    anomalous = item.score > image_threshold
                    row.update(
                        normalized_score=value if math.isfinite(value) else "",
                        decision="anomalous" if anomalous else "normal",
                        outcome=("T" if anomalous == bool(item.label) else "F") + ("P" if anomalous else "N"),
                    )
                if pixel_threshold is not None:
                    row["region"] = "drawn" if item.map_max > pixel_threshold else "none"
                rows.append(row)
        return rows

    def decisions_csv(self, image_threshold: float | None = None, pixel_threshold: float | None = None) -> str:
        """:meth:`decisions` as CSV text (``DECISION_FIELDS``)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=DECISION_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.decisions(image_threshold, pixel_threshold))
        return buffer.getvalue()

    def settings(self) -> dict:
        """The run's settings as the page lists them: the command's overrides, and every value of
        the run's config as ``dotted.key: value`` text."""
        config = {k: v for k, v in self.config.items() if k != "checkpoint"}
        flat: list[list[str]] = []

        def walk(value: object, key: str) -> None:
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    walk(v, f"{key}.{k}" if key else str(k))
            else:
                flat.append([key, value if isinstance(value, str) else _json(value)])

        walk(config, "")
        origin = self.config["checkpoint"]
        overrides = config.get("overrides")
        return {
            "overrides": [str(o) for o in overrides] if isinstance(overrides, list) else [],
            "checkpoint": {k: str(v) for k, v in origin.items()},
            "values": flat,
        }

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
            "calibrated_pixel_threshold": self.calibrated_pixel,
            "pixel_floor": self.pixel_floor,
            "map_range": None if self.map_range is None else list(self.map_range),
            "map_size": [self.image_size, self.image_size],
            "images_note": self.images_note,
            "token": self.token,
        }


def map_fields(anomaly_map: torch.Tensor) -> dict:
    """A raw anomaly map (H, W) as JSON fields: ``map_size`` [W, H] and ``map_f32``, its values as
    little-endian float32, row by row, base64 (what the page draws the heat map and region from)."""
    import base64

    return {
        "map_size": [anomaly_map.shape[1], anomaly_map.shape[0]],
        "map_f32": base64.b64encode(map_bytes(anomaly_map)).decode(),
    }


def map_bytes(anomaly_map: torch.Tensor) -> bytes:
    """A map (H, W) as little-endian float32 bytes, row by row."""
    return anomaly_map.detach().float().cpu().numpy().astype("<f4").tobytes()


def _json(value: object) -> str:
    import json

    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


def _number(value: torch.Tensor) -> float | None:
    number = float(value)
    return None if number != number else number
