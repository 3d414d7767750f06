"""From a network's raw anomaly map to what a user reads: the smoothed map, the image score,
the thresholds and the normalised outputs. One module, used by the test, by predict and by the
benchmark alike; its thresholds are buffers, so they travel inside every checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d
from torch import nn

THRESHOLDS = ("image_threshold", "pixel_threshold", "image_floor", "pixel_floor")


def gaussian_blur(anomaly_map: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing with a kernel of +-4 sigma (reflected borders), as the RD4AD and ADPS
    evaluations use. kornia's separable filter: two 1-D passes, ~20x faster on the CPU at 256 px
    than torchvision's full 2-D kernel (33x33 at sigma 4), same result to 1e-6. On maps smaller
    than the kernel, the kernel is cut to the map (a reflected border cannot be wider than it)."""
    if sigma <= 0:
        return anomaly_map
    half = min(int(4 * sigma + 0.5), min(anomaly_map.shape[-2:]) - 1)
    size = 2 * half + 1
    return gaussian_blur2d(anomaly_map, (size, size), (sigma, sigma), border_type="reflect", separable=True)


class PostProcessor(nn.Module):
    """Raw map (B,1,H,W) -> smoothed map and image score (max, mean, or mean of the top ``topk``
    share of pixels, or ``weighted``: of a share the network sets per image), in float32 even
    under AMP. The score is taken from the map smoothed with
    ``score_sigma`` (default: the map's ``sigma``): ADPS keeps its map sharp and scores max(G(M));
    and then, where ``score_box`` is set, averaged over score_box x score_box windows (DRAEM).

    Thresholds: set by :meth:`calibrate` from normal validation images, so that a share ``fpr``
    of normal images (and of normal pixels) lies above them: no anomalous images are needed, and
    a validation set without anomalies cannot push the threshold to flag everything. Normalised
    outputs put the threshold at 0.5: ``(x - floor) / (2 (threshold - floor))`` clipped to
    [0, 1], with ``floor`` the lowest validation value, so any method's output reads the same.

    A unified model (``category=all``) has these per category, each from that category's own
    validation images (:attr:`category_thresholds`), and none of its own: :meth:`use` makes one
    category's the thresholds it decides with (predict, export and serve take ``--category``).
    """

    def __init__(
        self,
        map_sigma: float = 4.0,
        score: str = "max",
        topk: float = 0.01,
        score_sigma: float | None = None,
        score_box: int = 0,
    ) -> None:
        super().__init__()
        if score_box and score_box % 2 == 0:
            raise ValueError(f"score_box is the odd side of a mean filter (DRAEM: 21), or 0; got {score_box}")
        self.score_box = int(score_box)
        sigma = map_sigma
        if score not in ("max", "mean", "topk", "weighted"):
            raise ValueError(f"score must be 'max', 'mean', 'topk' or 'weighted', got {score!r}")
        if not 0 < topk <= 1:
            raise ValueError(f"topk is the share of pixels averaged for score=topk, in (0, 1]; got {topk}")
        self.sigma, self.score, self.topk = sigma, score, topk
        self.score_sigma = sigma if score_sigma is None else score_sigma
        for name in THRESHOLDS:
            self.register_buffer(name, torch.tensor(float("nan")))
        # A unified model's thresholds, one set per category (name -> THRESHOLDS -> value); empty
        # for a model of one category. Not buffers: their number is the run's, and a state dict
        # keeps its keys whatever the run (the checkpoint carries them: AnomalyModule.on_save_checkpoint).
        self.category_thresholds: dict[str, dict[str, float]] = {}

    @property
    def calibrated(self) -> bool:
        return not bool(torch.isnan(self.image_threshold))

    # -- a unified model's per-category thresholds ------------------------------------------------
    def keep_for(self, category: str) -> None:
        """Keep the thresholds set now as ``category``'s."""
        self.category_thresholds[category] = {name: float(getattr(self, name)) for name in THRESHOLDS}

    def use(self, category: str) -> None:
        """Decide with ``category``'s thresholds from now on (a unified model's; KeyError for a category
        it has none for)."""
        for name, value in self.category_thresholds[category].items():
            getattr(self, name).fill_(value)

    def for_category(self, category: str) -> PostProcessor:
        """A copy that decides with ``category``'s thresholds (this one is left as it is)."""
        import copy

        chosen = copy.deepcopy(self)
        chosen.use(category)
        return chosen

    def forget_thresholds(self) -> None:
        """No thresholds (a unified model's own: only a category's mean anything)."""
        for name in THRESHOLDS:
            getattr(self, name).fill_(float("nan"))

    def forward(self, raw_map: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``raw_map``: a network's ``anomaly_map`` output: the map, or (map, share) from a network
        that sets the share of pixels its score averages per image (UniNet's weighted decision)."""
        raw_map, share = raw_map if isinstance(raw_map, tuple) else (raw_map, None)
        with torch.autocast(raw_map.device.type, enabled=False):
            anomaly_map = gaussian_blur(raw_map.float(), self.sigma)
            scored = anomaly_map if self.score_sigma == self.sigma else gaussian_blur(raw_map.float(), self.score_sigma)
            if self.score_box > 1:  # DRAEM: the score is the max of the map's local means (zero padding counted)
                scored = F.avg_pool2d(scored, self.score_box, 1, self.score_box // 2)
            flat = scored.flatten(1)
            if self.score == "max":
                pred_score = flat.amax(1)
            elif self.score == "topk":
                pixels = int(flat.shape[1])  # a constant in exported graphs too: their image size is fixed
                pred_score = flat.topk(max(1, round(self.topk * pixels)), dim=1).values.mean(1)
            elif self.score == "weighted":
                if share is None:
                    raise ValueError(
                        "post.score=weighted needs a network that sets a share of pixels per image (UniNet's)"
                    )
                pred_score = _mean_of_top_share(flat, share)
            else:
                pred_score = flat.mean(1)
        return anomaly_map, pred_score

    @torch.no_grad()
    def calibrate(self, scores: torch.Tensor, maps: torch.Tensor, fpr: float) -> None:
        """Thresholds at the (1 - fpr) quantile of normal validation image scores and pixels."""
        if not 0 < fpr < 1:
            raise ValueError(f"threshold.fpr must be in (0, 1), got {fpr}")
        self.image_threshold.fill_(_upper_quantile(scores.flatten(), fpr))
        self.pixel_threshold.fill_(_upper_quantile(maps.flatten(), fpr))
        self.image_floor.fill_(scores.min())
        self.pixel_floor.fill_(maps.min())

    def set_thresholds(self, image: float | None = None, pixel: float | None = None) -> None:
        """Fix thresholds by hand (``threshold.image=...``); the floors stay where calibration put them."""
        for value, threshold, floor in (
            (image, self.image_threshold, self.image_floor),
            (pixel, self.pixel_threshold, self.pixel_floor),
        ):
            if value is not None:
                threshold.fill_(value)
                if torch.isnan(floor) or floor >= value:
                    floor.fill_(0.0 if value > 0 else value - 1.0)

    def normalize(self, anomaly_map: torch.Tensor, pred_score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _around(anomaly_map, self.pixel_threshold, self.pixel_floor), self.normalize_score(pred_score)

    def normalize_score(self, pred_score: torch.Tensor) -> torch.Tensor:
        """Image scores on the scale where the image threshold is 0.5."""
        return _around(pred_score, self.image_threshold, self.image_floor)

    def in_threshold_units(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """The map rescaled so that the lowest validation value is 0 and the pixel threshold 1, not
        clipped: a monotone rescaling (threshold-free metrics unchanged) that any method's map reads
        the same in, and that keeps float16's precision where the threshold lies."""
        return (anomaly_map - self.pixel_floor) / _span(self.pixel_threshold, self.pixel_floor)


def _mean_of_top_share(flat: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
    """Per row, the mean of its floor(share * n) highest values (at least one): a sort and a running
    sum rather than topk, whose k cannot differ between the images of a batch (nor be a tensor in
    an exported graph)."""
    pixels = flat.shape[1]
    k = (share.float() * pixels).floor().clamp(1, pixels)
    running = flat.sort(dim=1, descending=True).values.cumsum(dim=1)
    return running.gather(1, k.long().unsqueeze(1) - 1).squeeze(1) / k


def _upper_quantile(values: torch.Tensor, share: float) -> float:
    """The value that ``share`` of ``values`` lie above (kthvalue: exact, and fine with the millions
    of pixels that torch.quantile refuses)."""
    k = min(len(values), max(1, int(round((1 - share) * len(values)))))
    return float(values.float().kthvalue(k).values)


def _span(threshold: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    return (threshold - floor).clamp_min(1e-6 * threshold.abs().clamp_min(1.0))  # a flat validation set


def _around(x: torch.Tensor, threshold: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    return ((x - floor) / (2 * _span(threshold, floor))).clamp(0, 1)
