import numpy as np
import pytest
import torch

from adkd.metrics import AUPRO, AnomalyMetrics, F1Max


def reference_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Straight from the definition: a threshold at every distinct score, one global FPR over all
    normal pixels, PRO = mean over all regions of the test set of the covered fraction; area
    under PRO(FPR) up to the limit (linear interpolation), divided by the limit."""
    from scipy.ndimage import label

    region_masks = []
    for b, m in enumerate(masks):
        lab, n = label(m)
        for k in range(1, n + 1):
            region = np.zeros_like(masks, dtype=bool)
            region[b] = lab == k
            region_masks.append(region)
    normal = masks == 0
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        hit = maps >= t
        fprs.append(hit[normal].mean())
        pros.append(np.mean([hit[r].mean() for r in region_masks]))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs <= fpr_limit
    x, y = list(fprs[keep]), list(pros[keep])
    j = keep.sum()
    if j < len(fprs) and x[-1] < fpr_limit:
        x.append(fpr_limit)
        y.append(np.interp(fpr_limit, fprs[j - 1 : j + 1], pros[j - 1 : j + 1]))
    return float(np.trapezoid(y, x) / fpr_limit)


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


def test_aupro_over_whole_set_matches_definition_on_random_data():
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 20, 20), dtype=np.int64)
    masks[0, 2:8, 3:9] = 1
    masks[0, 12:15, 12:18] = 1  # two regions in one image
    masks[2, 5:15, 5:7] = 1
    masks[4, 0:3, 0:20] = 1
    maps = rng.random((6, 20, 20)) + 0.4 * masks  # weakly informative
    m = AUPRO(fpr_limit=0.3)
    m.update(torch.from_numpy(maps).float(), torch.from_numpy(masks))
    ours = float(m.compute())
    assert 0.0 < ours < 1.0
    assert ours == pytest.approx(reference_aupro(maps.astype(np.float32), masks), abs=2e-3)


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
    from adkd.methods.postprocess import PostProcessor

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
    from adkd.methods.postprocess import PostProcessor

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

    batches = [(torch.tensor([0.2, 0.9]), torch.tensor([0, 1])),
               (torch.tensor([1.5, 30.0, 40.0]), torch.tensor([0, 1, 0]))]  # fmt: skip
    metrics = AnomalyMetrics(pixel=True)
    for scores, labels in batches:
        maps = scores[:, None, None, None].expand(-1, 1, 2, 2)
        metrics.update(scores, labels, maps, labels[:, None, None, None].expand(-1, 1, 2, 2))
    scores, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    out = metrics.compute()
    assert out["image_auroc"] == pytest.approx(roc_auc_score(labels, scores)) == pytest.approx(0.5)
    assert out["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    assert out["pixel_auroc"] == pytest.approx(0.5) and out["pixel_ap"] == pytest.approx(out["image_ap"], abs=1e-6)
