"""The image threshold an engineer chose after training (``adkd.serve``'s slider), kept in a
small file beside the checkpoint: ``checkpoints/last.threshold.json`` for ``last.ckpt``.

The checkpoint itself is never rewritten: its calibrated thresholds stay what training set. The
file names the checkpoint it was chosen for (its sha256); a checkpoint that has changed since (a
resumed run) makes it stale, and it is then ignored with a warning. :func:`adkd.inference.load_model`
applies it, so ``predict``, ``export`` and ``serve`` all use it; ``predict --threshold`` still
overrides it for one call. Its values are read like any value from a file (:mod:`adkd.trust`).

A unified model (``category=all``) has a threshold per category, and so a file per category:
``last.<category>.threshold.json``, used when that category is asked for (``--category``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from adkd.errors import CheckpointError


def sidecar_path(checkpoint: Path, category: str | None = None) -> Path:
    """The file beside ``checkpoint``; ``category``: one category's of a unified model."""
    return checkpoint.with_name(f"{checkpoint.stem}.{category + '.' if category else ''}threshold.json")


def save(checkpoint: Path, image_threshold: float, calibrated: float | None, category: str | None = None) -> Path:
    """Write the chosen image threshold for ``checkpoint`` (``category``'s, of a unified model),
    atomically: a reader never sees half a file."""
    from adkd.inference import file_digest

    path = sidecar_path(checkpoint, category)
    record = {
        **({"category": category} if category else {}),
        "image_threshold": float(image_threshold),
        "calibrated_image_threshold": calibrated,
        "checkpoint_sha256": file_digest(checkpoint),
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial, path)
    return path


def chosen(checkpoint: Path, digest: str | None = None, category: str | None = None) -> float | None:
    """The image threshold chosen for ``checkpoint`` as it is now (``category``'s, of a unified
    model), or None (no file, or a stale one: then a warning says so). ``digest``: the checkpoint's
    sha256, where the caller has it."""
    path = sidecar_path(checkpoint, category)
    if not path.is_file():
        return None
    from adkd import trust
    from adkd.inference import file_digest

    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"Cannot read {path} ({err}): delete it, or choose the threshold again "
                              "(python -m adkd.serve).") from err  # fmt: skip
    if not isinstance(record, dict) or "image_threshold" not in record:
        raise CheckpointError(f"{path} holds no image_threshold: delete it, or choose again (python -m adkd.serve).")
    value = trust.threshold(record["image_threshold"], "image_threshold", path)
    if value is None:
        raise CheckpointError(f"{path} gives no image threshold (NaN): delete it, or choose again.")
    if record.get("checkpoint_sha256") != (digest or file_digest(checkpoint)):
        print(f"warning: {path} was chosen for another version of {checkpoint.name} (the run has trained since): "
              "ignored; the calibrated threshold is used. Choose again with python -m adkd.serve.",
              file=sys.stderr)  # fmt: skip
        return None
    return value


def fingerprint(checkpoint: Path, category: str | None = None) -> str:
    """What an export records of the choice it carries (the sidecar file's sha256, or '' for none),
    so that an export made before a new choice is known to be stale."""
    path = sidecar_path(checkpoint, category)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
