"""Threshold-free anomaly detection metrics as torchmetrics objects. Loaded on first use, so that
``adkd.metrics.names`` (the report's) comes without torch."""

__all__ = ["AUPRO", "AnomalyMetrics", "F1Max"]
_HOMES = {"AUPRO": "adkd.metrics.aupro", "AnomalyMetrics": "adkd.metrics.collection", "F1Max": "adkd.metrics.f1max"}


def __getattr__(name: str):  # noqa: ANN202
    if name not in _HOMES:
        raise AttributeError(f"module 'adkd.metrics' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_HOMES[name]), name)
