"""Threshold-free anomaly detection metrics as torchmetrics objects."""

from adkd.metrics.collection import AnomalyMetrics
from adkd.metrics.f1max import F1Max
from adkd.metrics.aupro import AUPRO

__all__ = ["AUPRO", "AnomalyMetrics", "F1Max"]
