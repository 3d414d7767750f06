import numpy as np
import pytest
import torch

from adkd.metrics import AUPRO, AnomalyMetrics, F1Max
from tests.pro_reference import pro_curve, reference_aupro


def test_perfect_detector_scores_one_everywhere():
    masks = torch.zeros(4, 1, 16, 16)
    masks[1, :, 2:6, 2:6] = 1
    masks[3, :, 8:14, 1:3] = 1
    metrics = AnomalyMetrics()
    metrics.update(torch.tensor([0.1, 0.9, 0.2, 0.8]), torch.tensor([0, 1, 0, 1]), masks.clone(), masks)
    assert metrics.compute() == {k: 1.0 for k in metrics.compute()}


def test_inverted_detector_scores_zero_auroc():
    metrics = AnomalyMetrics(pixel=False)
    metrics.update(torch.tensor([0.9, 0.1]), torch.tensor([0, 1]))
    out = metrics.compute()
    assert out["image_auroc"] == 0.0
    assert set(out) == {"image_auroc", "image_ap", "image_f1max"}


def test_pro_hand_computed_case():
    # One 1x4 image: pixels 0,1 form one region; pixels 2,3 are normal. Scores 0.9 0.3 | 0.6 0.1.
    # Thresholds: 0.9 -> FPR 0, PRO 0.5; 0.6 -> FPR 0.5, PRO 0.5; with limit 0.5 the curve is
    # (0,0)-(0,0.5)-(0.5,0.5): area 0.25, normalised by 0.5 -> 0.5.
    m = AUPRO(fpr_limit=0.5)
    m.update(torch.tensor([[[0.9, 0.3, 0.6, 0.1]]]), torch.tensor([[[1, 1, 0, 0]]]))
    assert float(m.compute()) == pytest.approx(0.5)


def _aupro_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Maps and masks (N, H, W): random and structured, each with images without defects."""
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 20, 20), dtype=np.int64)
    masks[0, 2:8, 3:9] = 1
    masks[0, 12:15, 12:18] = 1  # two regions in one image
    masks[2, 5:15, 5:7] = 1
    masks[4, 0:3, 0:20] = 1  # images 1, 3, 5: no defect
    weak = rng.random((6, 20, 20)) + 0.4 * masks
    diagonal = np.zeros((3, 12, 12), dtype=np.int64)
    diagonal[0, range(5), range(5)] = 1  # one region if 8-connected, five if 4-connected
    diagonal[1, 6:9, 6:9] = diagonal[1, 0, 11] = 1
    diagonal_map = rng.random((3, 12, 12)) + 0.5 * diagonal
    diagonal_map[0, 4, 4] = 0.0  # the diagonal's end scores lowest: one region's share differs from five's
    return {
        "random": (weak, masks),
        "ties": (np.round(weak * 8) / 8, masks),  # 12 distinct scores over 2400 pixels
        "integer scores": (np.round(weak * 3) + 2 * masks * (rng.random(masks.shape) < 0.5), masks),
        "perfect": (masks.astype(float), masks),
        "constant": (np.zeros(masks.shape), masks),  # one threshold: the limit falls inside (0,0)-(1,1)
        "8-connected": (diagonal_map, diagonal),
    }


@pytest.mark.parametrize("case", list(_aupro_cases()))
def test_aupro_at_both_limits_equals_the_mvtec_evaluation_algorithm(case):
    maps, masks = (np.asarray(a) for a in _aupro_cases()[case])
    maps = maps.astype(np.float32)
    metrics = AnomalyMetrics()
    labels = torch.from_numpy(masks.reshape(len(masks), -1).max(1))
    metrics.update(torch.rand(len(masks)), labels, torch.from_numpy(maps)[:, None], torch.from_numpy(masks)[:, None])
    out = metrics.compute()
    for name, limit in (("pixel_aupro", 0.3), ("pixel_aupro_005", 0.05)):
        assert out[name] == pytest.approx(reference_aupro(maps, masks, limit), abs=1e-4), (case, name)
    assert out["pixel_aupro_005"] != out["pixel_aupro"] or case in ("perfect", "constant")


def test_the_reference_pro_is_right_by_hand():
    """tests/pro_reference.py on cases worked out by hand, so that agreeing with it means something."""
    # 1x4 image, region = pixels 0 and 1, scores 0.9 0.3 | 0.6 0.1: (0,0) (0,.5) (.5,.5) (.5,1) (1,1)
    fpr, pro = pro_curve(np.array([[[0.9, 0.3, 0.6, 0.1]]]), np.array([[[1, 1, 0, 0]]]))
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1, 1] and pro.tolist() == [0, 0.5, 0.5, 1, 1, 1]
    assert reference_aupro(np.array([[[0.9, 0.3, 0.6, 0.1]]]), np.array([[[1, 1, 0, 0]]]), 0.5) == 0.5
    assert reference_aupro(np.array([[[0.9, 0.3, 0.6, 0.1]]]), np.array([[[1, 1, 0, 0]]]), 0.25) == 0.5
    # a diagonal is one region (8-connected): half of it above the threshold is PRO 0.6 (3 of 5), not 3 of 5 regions
    masks = np.eye(5, dtype=np.int64)[None]
    maps = np.where(np.eye(5) > 0, [0.9, 0.9, 0.9, 0.1, 0.1], 0.0)[None]
    fpr, pro = pro_curve(maps, masks)
    assert pro[1] == pytest.approx(0.6) and fpr[1] == 0
    # constant map: the limit falls between (0, 0) and (1, 1): area 0.3 * 0.3 / 2, divided by 0.3
    assert reference_aupro(np.zeros((1, 4, 4)), np.eye(4, dtype=np.int64)[None], 0.3) == pytest.approx(0.15)


def test_pixel_auroc_ap_and_f1max_equal_scikit_learns_on_random_data():
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    gen = torch.Generator().manual_seed(0)
    masks = (torch.rand(5, 1, 16, 16, generator=gen) < 0.15).int()
    maps = torch.rand(5, 1, 16, 16, generator=gen) + 0.3 * masks
    metrics = AnomalyMetrics()
    metrics.update(torch.rand(5, generator=gen), torch.tensor([1, 1, 1, 1, 0]), maps, masks)
    out = metrics.compute()
    labels, scores = masks.flatten().numpy(), maps.flatten().numpy()
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert out["pixel_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    precision, recall, _ = precision_recall_curve(labels, scores)
    assert out["pixel_f1max"] == pytest.approx(np.max(2 * precision * recall / (precision + recall + 1e-12)), abs=1e-6)
    assert 0.5 < out["pixel_auroc"] < 0.95  # weakly informative: not a degenerate case


def test_segmentation_f1_counts_the_pixels_of_every_image_together():
    metrics = AnomalyMetrics()
    maps = torch.tensor([[0.9, 0.8, 0.2, 0.7], [0.1, 0.6, 0.3, 0.2]]).reshape(2, 1, 1, 4)
    masks = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]]).reshape(2, 1, 1, 4)
    metrics.update(torch.tensor([0.9, 0.6]), torch.tensor([1, 0]), maps, masks)
    # above 0.5: 0.9 0.8 (hits), 0.7 and 0.6 (false alarms); 0.2 missed: F1 = 2*2 / (2*2 + 2 + 1)
    assert metrics.segmentation_f1(0.5) == pytest.approx(4 / 7)
    assert metrics.segmentation_f1(0.95) == 0.0
    assert AnomalyMetrics(pixel=False).segmentation_f1(0.5) is None


def test_f1max_known_value():
    # Scores 0.9(1) 0.8(0) 0.7(1) 0.1(0): best threshold 0.7 -> P=2/3, R=1 -> F1 = 0.8.
    f1 = F1Max()
    f1.update(torch.tensor([0.9, 0.8, 0.7, 0.1]), torch.tensor([1, 0, 1, 0]))
    assert float(f1.compute()) == pytest.approx(0.8)


def test_metrics_a_one_class_test_split_cannot_define_are_none(caplog):
    import logging

    from adkd.metrics import AnomalyMetrics

    only_normal = AnomalyMetrics(pixel=True)
    only_normal.update(torch.tensor([0.1, 0.7]), torch.tensor([0, 0]), torch.rand(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))
    with caplog.at_level(logging.WARNING):
        out = only_normal.compute()
    assert all(v is None for v in out.values()), out  # never 0.0
    assert "image_auroc is undefined: the test split has no anomalous images" in caplog.text
    only_anomalous = AnomalyMetrics(pixel=False)
    only_anomalous.update(torch.tensor([0.1, 0.7]), torch.tensor([1, 1]))
    out = only_anomalous.compute()
    assert out["image_auroc"] is None and out["image_ap"] == 1.0  # AP is defined: every image is anomalous


def test_thresholds_from_normal_validation_meet_the_false_positive_target_on_held_out_normals():
    from adkd.methods.components.postprocess import PostProcessor

    gen = torch.Generator().manual_seed(0)
    val_scores, held_out = torch.randn(4000, generator=gen), torch.randn(20000, generator=gen)
    post = PostProcessor(map_sigma=0)
    post.calibrate(val_scores, torch.rand(8, 1, 16, 16, generator=gen), fpr=0.01)
    achieved = float((held_out > post.image_threshold).float().mean())
    assert abs(achieved - 0.01) < 0.003, achieved  # normal-only data: no anomalies needed
    assert abs(float(post.pixel_threshold) - 0.99) < 0.01  # uniform pixels: the 99th percentile
    maps, scores = post.normalize(torch.full((1, 1, 2, 2), float(post.pixel_threshold)), post.image_threshold[None])
    assert torch.allclose(maps, torch.tensor(0.5)) and torch.allclose(scores, torch.tensor(0.5))  # 0.5 = threshold
    post.set_thresholds(image=3.0)
    assert float(post.image_threshold) == 3.0 and float(post.normalize(maps, torch.tensor([3.0]))[1]) == 0.5


def test_precision_recall_and_fpr_at_the_threshold():
    from adkd.metrics import AnomalyMetrics

    metrics = AnomalyMetrics(pixel=False)
    metrics.update(torch.tensor([0.1, 0.2, 0.6, 0.4, 0.7, 0.9]), torch.tensor([0, 0, 0, 1, 1, 1]))
    out = metrics.at_threshold(0.5)  # predicted anomalous: 0.6 (wrong), 0.7, 0.9; missed: 0.4
    assert out == {"image_f1": 4 / 6, "image_precision": 2 / 3, "image_recall": 2 / 3, "image_fpr": 1 / 3}


def test_the_top_share_score_is_the_mean_of_the_top_pixels_and_traces_for_export():
    from adkd.methods.components.postprocess import PostProcessor

    post = PostProcessor(map_sigma=0, score="topk", topk=0.05)  # 5% of 10 x 10: the top 5 pixels
    raw = torch.arange(100.0).reshape(1, 1, 10, 10).repeat(2, 1, 1, 1)
    assert post(raw)[1].tolist() == [97.0, 97.0]
    traced = torch.jit.trace(post, raw)  # as export traces it (the pixel count must stay a number)
    assert traced(raw.flip(-1))[1].tolist() == [97.0, 97.0]


def test_scores_are_ranked_as_they_are_whatever_each_batch_holds():
    """torchmetrics' default sigmoid, applied to a batch only when it leaves [0, 1], would rank these
    two batches on two scales and tie 30 and 40 at 1.0: AUROC 0.75 and AP 0.583 instead of 0.5 and 0.5."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from adkd.metrics import AnomalyMetrics

    batches = [
        (torch.tensor([0.2, 0.9]), torch.tensor([0, 1])),
        (torch.tensor([1.5, 30.0, 40.0]), torch.tensor([0, 1, 0])),
    ]
    metrics = AnomalyMetrics(pixel=True)
    for scores, labels in batches:
        maps = scores[:, None, None, None].expand(-1, 1, 2, 2)
        metrics.update(scores, labels, maps, labels[:, None, None, None].expand(-1, 1, 2, 2))
    scores, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    out = metrics.compute()
    assert out["image_auroc"] == pytest.approx(roc_auc_score(labels, scores)) == pytest.approx(0.5)
    assert out["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    assert out["pixel_auroc"] == pytest.approx(0.5) and out["pixel_ap"] == pytest.approx(out["image_ap"], abs=1e-6)


@pytest.mark.slow
def test_aupro_equals_the_mvtec_evaluation_algorithm_at_a_test_sets_size():
    """80 smooth maps of 256 x 256 px (5.2 million pixels, float32): anomalib sums the overlaps in
    float32, the MVTec code in float64; at this size they still agree (measured 5e-8)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(1)
    masks = np.zeros((80, 256, 256), dtype=np.int64)
    for i in range(0, 80, 2):
        for _ in range(rng.integers(1, 4)):
            (y, x), (h, w) = rng.integers(0, 216, 2), rng.integers(3, 40, 2)
            masks[i, y : y + h, x : x + w] = 1
    maps = gaussian_filter(rng.random(masks.shape), (0, 4, 4)) + 0.05 * gaussian_filter(masks * 1.0, (0, 3, 3))
    maps = maps.astype(np.float32)
    metrics = AnomalyMetrics()
    maps_t, masks_t = torch.from_numpy(maps)[:, None], torch.from_numpy(masks)[:, None]
    metrics.update(torch.rand(80), torch.tensor([1, 0] * 40), maps_t, masks_t)
    out = metrics.compute()
    assert out["pixel_aupro"] == pytest.approx(reference_aupro(maps, masks, 0.3), abs=1e-4)
    assert out["pixel_aupro_005"] == pytest.approx(reference_aupro(maps, masks, 0.05), abs=1e-4)


def test_the_segmentation_threshold_rules():
    from adkd.metrics.segmentation import segmentation_threshold

    maps = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(2, 1, 1, 2)  # mean 2.5, std (over all pixels) sqrt(1.25)
    assert segmentation_threshold(maps, "mean_std", 3.0, fpr_threshold=9.0) == pytest.approx(2.5 + 3 * 1.25**0.5)
    assert segmentation_threshold(maps, "mean_std", 0.0, fpr_threshold=9.0) == pytest.approx(2.5)
    assert segmentation_threshold(maps, "fpr", 3.0, fpr_threshold=3.75) == 3.75
    with pytest.raises(ValueError, match="segmentation.rule"):
        segmentation_threshold(maps, "otsu", 3.0, fpr_threshold=1.0)
