"""Sample-level metrics for datasets that photograph each part from several views (Real-IAD's
multi-view protocol): a part is as anomalous as its worst view, and scored by its highest-scoring
view, as the authors' evaluation (ADEval, ``--sample_key_pat``) takes the maximum of the views'
image scores and of their labels."""

from __future__ import annotations

import logging

import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_precision_recall_curve,
)

from adkd.metrics.names import SAMPLE_METRICS

log = logging.getLogger(__name__)


def per_sample(scores: list[float], labels: list[int], samples: list[str]) -> tuple[list[float], list[int]]:
    """Each sample's score (its views' highest) and label (1 if any view is anomalous), in the
    order the samples first appear."""
    best: dict[str, list] = {}
    for score, label, sample in zip(scores, labels, samples, strict=True):
        seen = best.setdefault(sample, [score, label])
        seen[0], seen[1] = max(seen[0], score), max(seen[1], label)
    return [s for s, _ in best.values()], [y for _, y in best.values()]


def sample_metrics(scores: list[float], labels: list[int], samples: list[str]) -> dict[str, float | None]:
    """``sample_auroc``, ``sample_ap`` and ``sample_f1max`` over the samples; None where undefined
    (AUROC needs both kinds of sample, AP and F1-max an anomalous one)."""
    sample_scores, sample_labels = per_sample(scores, labels, samples)
    preds = torch.tensor(sample_scores, dtype=torch.float64)
    target = torch.tensor(sample_labels, dtype=torch.long)
    anomalous, normal = int(target.sum()), len(target) - int(target.sum())
    if not anomalous:
        log.warning("sample metrics are undefined: the test split has no anomalous samples")
        return dict.fromkeys(SAMPLE_METRICS)
    precision, recall, _ = binary_precision_recall_curve(preds, target, thresholds=None)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    return {
        "sample_auroc": float(binary_auroc(preds, target, thresholds=None)) if normal else None,
        "sample_ap": float(binary_average_precision(preds, target, thresholds=None)),
        "sample_f1max": float(f1.max()),
    }
