"""Run folders: unique names, a status file, and finding the run that ``resume=true`` continues.

Each run folder holds ``status.json``: ``running`` while it trains, then ``finished``, ``failed``
(with the error) or ``interrupted`` (with the checkpoint to resume from). Only a finished run has
``metrics.json``; the report lists the others.

Import-light: the resolver below is registered before Hydra composes the config.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import socket
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from adkd.errors import ConfigError, cause_in
from adkd.locks import holder, release, try_lock
from adkd.training.devices import free_gpu  # imports torch: only when trainer=gpu_per_job asks

STATUS_FILE = "status.json"
LOCK_FILE = ".run.lock"  # held by the process training the run, for its whole life
MIN_FREE_BYTES = 1 << 20  # less than this where a run would be created: refuse before writing anything
# Overrides that do not change what a run computes: a relaunch that differs only in these is
# "the same command" for resume=true.
NOT_PART_OF_THE_RUN = ("resume", "ckpt_path", "hydra.", "logger", "experiment_name")

_chosen: dict[tuple, str] = {}  # one folder per process and arguments (Hydra reads the run dir more than once)
_claimed: dict[str, int] = {}  # run folder -> descriptor holding its lock


class RunTaken(ConfigError):
    """The run folder is being trained by another live process."""


def claim_run(folder: Path) -> None:
    """Hold ``folder``'s lock for as long as this process lives (or until it claims another run:
    a multirun's jobs in one process), or raise RunTaken naming the holder."""
    folder = Path(folder)
    if str(folder) in _claimed:
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = try_lock(folder / LOCK_FILE)
    if fd is None:
        raise RunTaken(
            f"{folder} is being trained by another process ({holder(folder / LOCK_FILE)}): two processes "
            "would write the same checkpoint. Wait for it to end (or stop it), then resume."
        )
    for other in list(_claimed):
        release(_claimed.pop(other))
    _claimed[str(folder)] = fd


def read_status(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_status(folder: Path, status: str, **details) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "status": status,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        **details,
    }
    text = json.dumps(record, indent=2)
    tmp = folder / f".{STATUS_FILE}.tmp"
    try:
        tmp.write_text(text)
        os.replace(tmp, folder / STATUS_FILE)  # atomic: a kill never leaves half a status
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno != errno.ENOSPC or not (folder / STATUS_FILE).is_file():
            raise
        # A full disk: rewrite the status in place, in the blocks the file already has (a status
        # is far smaller than one block), so that it still reads failed rather than running.
        with open(folder / STATUS_FILE, "r+") as f:
            f.write(text)
            f.truncate()


def disk_full_message(err: BaseException, folder: Path) -> str | None:
    """One line for an error caused by a full disk (None for any other error)."""
    if cause_in(err, lambda e: isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) is None:
        return None
    free = shutil.disk_usage(folder).free if Path(folder).exists() else 0
    kept = newest_checkpoint(folder)
    return (
        f"The device holding {folder} ran out of space ({free / 2**20:.1f} MB free now). "
        + (f"The checkpoint of the last finished epoch is kept: {kept}. " if kept else "")
        + "Free space there, or set paths.output_root to a disk with room."
    )


def refuse_if_full(target: Path) -> None:
    """Before Hydra writes a new run or sweep folder: stop with one line if its disk is full (Hydra
    would fail writing its config with a traceback, and leave a folder with no status)."""
    existing = Path(target)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        print(
            f"error: no space to start a run in {target}: {free / 2**10:.0f} KB free on the device holding "
            f"{existing}. Free space there, or set paths.output_root to a disk with room.",
            file=sys.stderr,
        )
        # Called from the resolver that names the folder, inside Hydra: SystemExit is the one way
        # out that Hydra passes through without printing a traceback.
        raise SystemExit(1)


def newest_checkpoint(folder: Path) -> Path | None:
    """The most recent checkpoint of a run: ``last.ckpt`` (epoch ends, or every N steps) or a
    SLURM requeue checkpoint (``hpc_ckpt_*.ckpt``, written by Lightning on the requeue signal)."""
    folder = Path(folder)
    found = [p for p in (*folder.glob("checkpoints/*.ckpt"), *folder.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _run_overrides(overrides: list[str]) -> list[str]:
    return sorted(o for o in overrides if not o.lstrip("+~").startswith(NOT_PART_OF_THE_RUN))


def find_resumable(parent: Path, overrides: list[str]) -> Path | None:
    """The newest unfinished run under ``parent`` launched with the same overrides."""
    wanted = _run_overrides(overrides)
    candidates = []
    for folder in Path(parent).glob("*/"):
        status = read_status(folder).get("status")
        if status in (None, "finished"):
            continue
        try:
            saved = OmegaConf.to_container(OmegaConf.load(folder / ".hydra" / "overrides.yaml"))
        except (OSError, ValueError):
            continue
        if _run_overrides(saved) == wanted:
            candidates.append(folder)
    return max(candidates, key=lambda f: f.stat().st_mtime) if candidates else None


def resume_requested(flag: bool) -> bool:
    """resume=true, or a SLURM job that was requeued (preempted or timed out) and starts again."""
    return bool(flag) or int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def requeued_job(folder: Path) -> bool:
    """A job that submitit requeued (on SLURM or locally) and that starts again in its own folder:
    the folder holds the unfinished run of its earlier start."""
    return bool(os.environ.get("SUBMITIT_EXECUTOR")) and read_status(folder).get("status") not in (None, "finished")


def run_dir(root: str, method: str, dataset: str, category, resume, *, _root_) -> str:  # noqa: ANN001
    """``hydra.run.dir``: ``<root>/<method>/<dataset>/<category>/<time>_<6 random hex>`` (two runs
    started in the same second never share a folder), or with resume the folder being continued."""
    key = (root, method, dataset, category, resume)
    if key not in _chosen:
        parent = Path(root) / method / dataset / (str(category) if category is not None else "all")
        found = None
        if resume_requested(resume):
            overrides = list(OmegaConf.select(_root_, "hydra.overrides.task", default=[]) or [])
            found = find_resumable(parent, overrides)
        _chosen[key] = str(found or parent / unique_name())
        if found is None:
            refuse_if_full(Path(_chosen[key]))
    return _chosen[key]


def sweep_dir(root: str) -> str:
    """``hydra.sweep.dir``: ``<root>/multirun/<time>_<6 random hex>``, one per launch."""
    if ("sweep",) not in _chosen:
        _chosen[("sweep",)] = str(Path(root) / "multirun" / unique_name())
        refuse_if_full(Path(_chosen[("sweep",)]))
    return _chosen[("sweep",)]


def launched_sweep() -> str | None:
    """The sweep folder this process launched, if it launched one."""
    return _chosen.get(("sweep",))


def unique_name() -> str:
    return f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{secrets.token_hex(3)}"


def config_tree(cfg, first: tuple[str, ...] = ("method", "dataset", "backbone", "trainer")) -> str:  # noqa: ANN001
    """The composed config as a tree (rich), main groups first, for the console and the run folder."""
    from io import StringIO

    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key in [*(k for k in first if k in cfg), *(k for k in cfg if k not in first)]:
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if OmegaConf.is_config(value) else str(value)
        tree.add(str(key)).add(Syntax(text.rstrip(), "yaml", theme="ansi_dark"))
    buffer = StringIO()
    Console(file=buffer, width=110, color_system=None).print(tree)
    return buffer.getvalue()


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("adkd_run_dir"):
        OmegaConf.register_new_resolver("adkd_run_dir", run_dir)
    if not OmegaConf.has_resolver("adkd_sweep_dir"):
        # cached: the launcher copies its cache into each job (other processes too): one sweep folder
        OmegaConf.register_new_resolver("adkd_sweep_dir", sweep_dir, use_cache=True)
    if not OmegaConf.has_resolver("adkd_free_gpu"):
        OmegaConf.register_new_resolver("adkd_free_gpu", _free_gpu)


def _free_gpu() -> list[int]:
    return free_gpu()
