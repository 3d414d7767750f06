"""Checks Hydra runs in the launching process before a multirun starts (conf/run.yaml's
``hydra.callbacks``), so that a launcher that cannot work here fails in one line, not in a traceback
from inside Hydra."""

from __future__ import annotations

import shutil
import sys

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


class SlurmTools(Callback):
    """The SLURM launcher (hydra/launcher=slurm) submits with sbatch: without it, say so."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:  # noqa: ANN003
        target = str(OmegaConf.select(config, "hydra.launcher._target_", default="") or "")
        if not target.endswith("SlurmLauncher"):
            return
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:
            print(
                f"error: hydra/launcher=slurm submits jobs to SLURM, and this machine has no {' or '.join(missing)}. "
                "Launch from a node of the cluster, or try the same jobs here with hydra/launcher=local.",
                file=sys.stderr,
            )
            sys.exit(1)
