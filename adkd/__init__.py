"""adkd: knowledge-distillation anomaly detection on PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
