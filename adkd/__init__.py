"""adkd: knowledge-distillation anomaly detection on PyTorch Lightning and Hydra."""

from adkd import moved
from adkd.training.quiet import quiet_warnings
from adkd.training.runs import register_resolvers
from adkd.version import __version__

__all__ = ["__version__"]

moved.install()  # the modules of earlier versions, and their commands
quiet_warnings()  # known third-party warnings, one message each
register_resolvers()  # conf/run.yaml names its run folders through them
