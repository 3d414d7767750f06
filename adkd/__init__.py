"""adkd: knowledge-distillation anomaly detection on PyTorch Lightning and Hydra."""

from adkd.runs import register_resolvers

__version__ = "0.1.0"

register_resolvers()  # conf/run.yaml names its run folders through them
