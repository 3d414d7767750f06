"""One GPU per job when several jobs of a multirun share a node (``trainer=gpu_per_job``).

Each job claims a visible CUDA device by taking an exclusive lock on a file named after it; the
lock lives as long as the process, so a device is free again the moment its job ends, however it
ends. Jobs of different multiruns on the same machine see the same locks. A worker process that
runs several jobs in turn (joblib) keeps its device.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from adkd.errors import ConfigError
from adkd.locks import try_lock

log = logging.getLogger(__name__)

_held: dict[str, tuple[int, int]] = {}  # lock folder -> (device index, open lock file descriptor)


def lock_folder() -> Path:
    return Path(os.environ.get("ADKD_GPU_LOCKS", Path(tempfile.gettempdir()) / f"adkd-gpu-locks-{os.getuid()}"))


def claim(count: int, folder: Path | None = None, poll_s: float = 5.0) -> int:
    """The index of one of ``count`` devices that no other process holds, held from now on by this
    one. Waits while every device is taken (more jobs than devices)."""
    folder = Path(folder or lock_folder())
    if str(folder) in _held:
        return _held[str(folder)][0]
    folder.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for index in range(count):
            fd = try_lock(folder / f"cuda{index}.lock")
            if fd is None:
                continue
            _held[str(folder)] = (index, fd)
            log.info("This job trains on CUDA device %d (locks in %s)", index, folder)
            return index
        if not waited:
            log.info("All %d CUDA devices are held by other adkd jobs; waiting for one", count)
            waited = True
        time.sleep(poll_s)


def free_gpu() -> list[int]:
    """``trainer.devices`` for ``trainer=gpu_per_job``: ``[k]``, a visible device of its own."""
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise ConfigError("trainer=gpu_per_job needs CUDA GPUs, and torch sees none. Use trainer=cpu.")
    return [claim(count)]
