"""Threshold-free anomaly detection metrics as torchmetrics objects."""

from adkd.metrics.aupro import AUPRO
from adkd.metrics.collection import AnomalyMetrics
from adkd.metrics.f1max import F1Max

__all__ = ["AUPRO", "AnomalyMetrics", "F1Max"]
