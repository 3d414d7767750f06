"""Third-party messages a run does not need, silenced one by one: each filter matches one message
of one library, for the reason beside it. Anything else those libraries say still shows."""

from __future__ import annotations

import logging
import warnings

KNOWN = (
    # anomalib imports timm's old module path, and its DINOv2 layers warn of their own deprecation,
    # whenever any anomalib model module is imported (adkd imports its metrics and generators).
    (FutureWarning, r"Importing from timm\.models\.layers is deprecated"),
    (FutureWarning, r"The anomalib\.models\.components\.dinov2 package is deprecated"),
    # Lightning's pytree helper on this torch: internal to Lightning's loops.
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # TrainingLength sets the epochs from `steps` when training starts (and says so).
    (Warning, r"`max_epochs` was not set"),
    # PatchCore trains no weights: it has no optimiser on purpose.
    (Warning, r"`LightningModule.configure_optimizers` returned `None`"),
    # A small folder gives fewer batches an epoch than Lightning's logging interval.
    (Warning, r"The number of training batches \(\d+\) is smaller than the logging interval"),
    # Frozen teachers are in eval mode on purpose.
    (Warning, r".*module\(s\) in eval mode"),
)


def quiet_warnings() -> None:
    """Install the filters above (``import adkd`` does)."""
    for category, message in KNOWN:
        warnings.filterwarnings("ignore", message=message, category=category)


def quiet_lightning_notes() -> None:
    """Keep Lightning's start-up notes (accelerators found, tips) out of a run's terminal; its
    warnings still show."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


class TerminalFormatter(logging.Formatter):
    """A run's terminal lines: the message alone, ``warning:`` or ``error:`` before the ones that
    need reading (conf/run.yaml's hydra.job_logging; run.log keeps time and source)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.ERROR:
            return f"error: {text}"
        return f"warning: {text}" if record.levelno >= logging.WARNING else text
