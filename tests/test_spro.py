"""AU-sPRO (adkd.metrics.spro) on cases worked out by hand, against a plain reimplementation of
MVTec LOCO AD's evaluation (one binary map per threshold, overlaps counted region by region), and
through the datamodule and the metric collection on a replica of the dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adkd.data.records import Saturation
from adkd.metrics.spro import MAX_REGIONS, SPRO, region_saturation


def regions_of(masks: list[np.ndarray], saturations: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's regions as the dataset gives them: bits (1,1,H,W) and areas (1, MAX_REGIONS)."""
    bits = torch.zeros(1, 1, *masks[0].shape, dtype=torch.int64)
    for k, mask in enumerate(masks):
        bits |= torch.from_numpy(mask.astype(np.int64))[None, None] << k
    areas = torch.zeros(1, MAX_REGIONS)
    areas[0, : len(saturations)] = torch.tensor(saturations)
    return bits, areas


def spro_of(images: list[tuple[np.ndarray, list[np.ndarray], list[float]]], limits: list[float]) -> list[float]:
    metric = SPRO()
    for scores, masks, saturations in images:
        bits, areas = regions_of(masks or [np.zeros(scores.shape, bool)], saturations)
        metric.update(torch.tensor(scores, dtype=torch.float32)[None, None], bits, areas)
    return metric.areas(limits)


def test_one_region_found_in_steps_of_its_saturation():
    """A normal image of ten scores 0.1 ... 1.0 (FPR steps of 0.1); an image that is all one region
    of 4 px, scores 0.95, 0.75, 0.55, 0.35, saturated at 2 px (sPRO steps of 0.5). The curve:
    (0, 0), (0.1, 0), (0.1, 0.5), (0.3, 0.5), (0.3, 1), ... Up to 0.3 the area is 0.2 x 0.5 = 0.1,
    1/3 of the limit; up to 0.15 it is 0.05 x 0.5 = 0.025, 1/6; up to 0.05, none."""
    normal = np.arange(1, 11, dtype=np.float64).reshape(2, 5) / 10
    region = np.array([[0.95, 0.75], [0.55, 0.35]])
    images = [(normal, [], []), (region, [np.ones((2, 2), bool)], [2.0])]
    assert spro_of(images, [0.3, 0.15, 0.05]) == pytest.approx([1 / 3, 1 / 6, 0.0], abs=1e-9)


def test_overlapping_regions_saturation_rules_and_a_tie_across_the_two_kinds_of_pixel():
    """An anomalous image of 6 px, scores 0.9 0.7 0.8 0.3 0.2 0.6: region A on px 0-2 (relative
    saturation 1.0: all 3 px), region B on px 2-3 (absolute 2 px, its area); px 4-5 and a normal
    image's 0.7 and 0.1 are the 4 region-free pixels. By threshold: 0.9: A 1/3, B 0, sPRO 1/6;
    0.8: A 2/3, B 1/2, 7/12; 0.7 takes a region pixel and a free one at once (a threshold takes
    every pixel of a score): A 1, sPRO 3/4, FPR 1/4; 0.6: FPR 1/2; 0.3: sPRO 1. So (0, 7/12) to
    (0.25, 3/4) is one sloped segment: to 0.05 the curve reaches 37/60 and the area is
    0.05 x (7/12 + 37/60) / 2 = 0.03, so 0.6; to 0.3 it is 1/6 + 0.05 x 3/4 = 49/240, so 49/72."""
    scores = np.array([[0.9, 0.7, 0.8, 0.3, 0.2, 0.6]])
    a = np.array([[1, 1, 1, 0, 0, 0]], bool)
    b = np.array([[0, 0, 1, 1, 0, 0]], bool)
    rules = [region_saturation(3, Saturation(1, 1.0, True)), region_saturation(2, Saturation(2, 2, False))]
    assert rules == [3.0, 2.0]
    images = [(scores, [a, b], rules), (np.array([[0.7, 0.1]]), [], [])]
    assert spro_of(images, [0.05, 0.3]) == pytest.approx([0.6, 49 / 72], abs=1e-9)


def test_saturation_areas_follow_the_defects_config():
    absolute, relative = Saturation(255, 20, False), Saturation(254, 0.5, True)
    assert region_saturation(100, absolute) == 20  # a pixel count
    assert region_saturation(16, absolute) == 16  # never more than the region
    assert region_saturation(100, absolute, scale=0.25) == 5  # at a quarter of the pixels, a quarter of the count
    assert region_saturation(5, relative) == 2  # a share of the area, cut to whole pixels as the evaluation does
    assert region_saturation(1, relative) == 1  # never 0 pixels (the evaluation would divide by 0)
    assert region_saturation(0, relative) == 0  # nothing left of the region at this size: left out


def reference_spro(images, limits):  # noqa: ANN001, ANN201
    """MVTec LOCO AD's evaluation written out plainly: for each threshold t (above every score,
    then each distinct score), the binary maps ``score >= t`` (``score > t'`` for a t' just below);
    each region's overlap min(1, TP / saturation), their mean; the FPR over every region-free
    pixel; the trapezoid up to the limit, the last point interpolated, divided by the limit."""
    every = np.unique(np.concatenate([s.ravel() for s, _, _ in images]))[::-1]
    fprs, spros = [0.0], [0.0]
    for t in every:
        overlaps, fp, free = [], 0, 0
        for scores, masks, saturations in images:
            flagged = scores >= t
            union = np.any(masks, axis=0) if masks else np.zeros(scores.shape, bool)
            fp += int((flagged & ~union).sum())
            free += int((~union).sum())
            overlaps += [min(1.0, (flagged & m).sum() / s) for m, s in zip(masks, saturations, strict=True)]
        fprs.append(fp / free)
        spros.append(float(np.mean(overlaps)))
    x, y = np.array(fprs), np.array(spros)
    out = []
    for limit in limits:
        keep = x <= limit
        area = np.sum((x[keep][1:] - x[keep][:-1]) * (y[keep][1:] + y[keep][:-1]) / 2)
        if limit not in x:
            i = int(np.searchsorted(x, limit, side="right"))
            y_at = y[i - 1] + (y[i] - y[i - 1]) * (limit - x[i - 1]) / (x[i] - x[i - 1])
            area += (limit - x[i - 1]) * (y_at + y[i - 1]) / 2
        out.append(area / limit)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_plain_reimplementation_on_random_maps_with_ties(seed):
    rng = np.random.default_rng(seed)
    images = []
    for i in range(6):
        scores = np.round(rng.random((12, 12)), 1 if seed == 0 else 3)  # seed 0: many ties
        masks, saturations = [], []
        for _ in range(int(rng.integers(0, 4)) if i else 0):  # image 0 is normal
            y, x, h, w = rng.integers(0, 9, 4)
            mask = np.zeros((12, 12), bool)
            mask[y : y + h + 1, x : x + w + 1] = True
            scores[mask] += rng.random() * 0.5  # regions score somewhat higher
            rule = (
                Saturation(255, float(rng.integers(1, 30)), False) if rng.random() < 0.5 else Saturation(1, 0.6, True)
            )
            masks.append(mask)
            saturations.append(region_saturation(int(mask.sum()), rule))
        images.append((scores.astype(np.float32).astype(np.float64), masks, saturations))
    limits = [0.05, 0.3, 1.0]
    assert spro_of(images, limits) == pytest.approx(reference_spro(images, limits), abs=1e-6)


def test_a_loco_replica_through_the_loader_and_the_metric_collection(tmp_path):
    """A map that marks exactly the ground truth finds every region at FPR 0; other datasets'
    batches (no regions) give no sPRO keys at all."""
    from torch.utils.data import DataLoader

    from adkd.data.dataset import AnomalyDataset
    from adkd.data.mvtec_loco import MVTecLOCODataModule
    from adkd.metrics import AnomalyMetrics
    from tests import replicas

    root = replicas.mvtec_loco(tmp_path / "loco")
    test = MVTecLOCODataModule(root=str(root), category="breakfast_box").records("test")
    metrics, plain = AnomalyMetrics(), AnomalyMetrics()
    for batch in DataLoader(AnomalyDataset(test, image_size=32), batch_size=2):
        noise = torch.rand_like(batch["gt_mask"]) * 0.5
        maps = batch["gt_mask"] + noise
        score = maps.flatten(1).amax(1)
        metrics.update(score, batch["gt_label"], maps, batch["gt_mask"], batch["gt_regions"], batch["gt_saturation"])
        plain.update(score, batch["gt_label"], maps, batch["gt_mask"])
    values = metrics.compute()
    assert values["pixel_spro"] == pytest.approx(1.0) and values["pixel_spro_03"] == pytest.approx(1.0)
    assert "pixel_spro" not in plain.compute()


def test_the_test_tally_scores_spro_and_each_kind_of_anomaly_apart(tmp_path):
    """What a test run of MVTec LOCO AD writes: AU-sPRO from the batches' regions, and image AUROC
    on the normal images with each kind of anomaly. Scores: normal 0.1, 0.2; logical 0.15, 0.9
    (3 of 4 pairs ranked right: 0.75); structural 0.5 (1.0); all together 5 of 6."""
    from types import SimpleNamespace

    from torch.utils.data import DataLoader

    from adkd.data.dataset import AnomalyDataset
    from adkd.data.mvtec_loco import MVTecLOCODataModule
    from adkd.training.evaluation import _Tally
    from tests import replicas

    root = replicas.mvtec_loco(tmp_path / "loco")
    test = MVTecLOCODataModule(root=str(root), category="breakfast_box").records("test")
    given = {"good/000": 0.1, "good/001": 0.2, "logical_anomalies/000": 0.15, "logical_anomalies/001": 0.9}
    given["structural_anomalies/000"] = 0.5
    tally = _Tally(pixel=True, num_figures=0)
    for batch in DataLoader(AnomalyDataset(test, image_size=16), batch_size=2):
        names = [f"{p.split('/')[-2]}/{p.split('/')[-1][:-4]}" for p in batch["image_path"]]
        tally.add(batch, batch["gt_mask"] * 2 - 1, torch.tensor([given[n] for n in names]))
    metrics = tally.compute(SimpleNamespace(calibrated=False), milliseconds=1.0)
    assert metrics["image_auroc"] == pytest.approx(5 / 6)
    assert metrics["image_auroc_logical"] == pytest.approx(0.75)
    assert metrics["image_auroc_structural"] == pytest.approx(1.0)
    assert metrics["pixel_spro"] == pytest.approx(1.0) and metrics["pixel_spro_03"] == pytest.approx(1.0)


def test_each_kind_of_anomaly_is_scored_with_the_normal_images_alone_and_the_official_mean_is_theirs():
    """Images of 4 px. Normal: 0.1 0.2 0.3 0.4. Logical: a region on px 0-1 (saturated at 2 px),
    scores 0.9 0.25, the rest 0.05 0.05. Structural: a region on px 0 (1 px) at 0.35, a region-free
    px at 0.95, the rest 0. Logical kind (normal + logical, 6 free px): 0.9 finds half the region at
    FPR 0, the next step is FPR 1/6 > 0.05: the area to 0.05 is 0.05 x 1/2, so 0.5. Structural kind
    (normal + structural, 7 free px): 0.95 costs FPR 1/7 before the region is found: 0. The official
    mean: 0.25. Pooled over every image (``pixel_spro``), the structural image's 0.95 comes before the
    logical region too (FPR 1/9 first): 0. Image scores 0.5 (normal), 0.3 (logical), 0.7 (structural):
    image AUROC 0 and 1 per kind, mean 0.5."""
    from types import SimpleNamespace

    from adkd.training.evaluation import _Tally

    scores = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.9, 0.25, 0.05, 0.05], [0.35, 0.95, 0.0, 0.0]])
    masks = np.array([[0, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
    bits = torch.from_numpy(masks.astype(np.int64))  # region 0 of each image
    areas = torch.zeros(3, MAX_REGIONS)
    areas[1, 0], areas[2, 0] = 2.0, 1.0
    batch = {
        "gt_label": torch.tensor([0, 1, 1]),
        "gt_mask": torch.from_numpy(masks).float().reshape(3, 1, 1, 4),
        "gt_regions": bits.reshape(3, 1, 1, 4),
        "gt_saturation": areas,
        "image_path": ["good/000.png", "logical_anomalies/000.png", "structural_anomalies/000.png"],
        "defect": ["good", "logical_anomalies", "structural_anomalies"],
    }
    tally = _Tally(pixel=True, num_figures=0)
    tally.add(batch, scores.reshape(3, 1, 1, 4), torch.tensor([0.5, 0.3, 0.7]))  # image scores
    metrics = tally.compute(SimpleNamespace(calibrated=False), 1.0)
    # image AUROC per kind: the logical image below the normal one (0), the structural above (1)
    assert (metrics["image_auroc_logical"], metrics["image_auroc_structural"], metrics["image_auroc_mean"]) == (
        0.0,
        1.0,
        0.5,
    )
    assert metrics["pixel_spro_logical"] == pytest.approx(0.5, abs=1e-9)
    assert metrics["pixel_spro_structural"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["pixel_spro_mean"] == pytest.approx(0.25, abs=1e-9)
    assert metrics["pixel_spro"] == pytest.approx(0.0, abs=1e-9)

    only_logical = _Tally(pixel=True, num_figures=0)  # a test split without structural anomalies: no mean
    chosen = [0, 1]
    part = {k: v[chosen] if isinstance(v, torch.Tensor) else [v[i] for i in chosen] for k, v in batch.items()}
    only_logical.add(part, scores[chosen].reshape(2, 1, 1, 4), scores[chosen].max(dim=1).values)
    metrics = only_logical.compute(SimpleNamespace(calibrated=False), 1.0)
    assert metrics["pixel_spro_logical"] == pytest.approx(0.5, abs=1e-9) and "image_auroc_mean" not in metrics
    assert metrics["pixel_spro_structural"] is None and metrics["pixel_spro_mean"] is None
