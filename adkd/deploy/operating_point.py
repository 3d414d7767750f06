"""The thresholds an engineer chose after training (``adkd.deploy.serve``'s sliders), kept in a
small file beside the checkpoint: ``checkpoints/last.threshold.json`` for ``last.ckpt``.

Two thresholds, separate: the image threshold decides whether an image is anomalous (its score
above it), the pixel threshold draws the predicted region (the anomaly map above it). The file
always holds the image threshold; the pixel threshold is in it where one was chosen (files
written before it could be chosen have none, and the calibrated pixel threshold is then used).

The checkpoint itself is never rewritten: its calibrated thresholds stay what training set. The
file names the checkpoint it was chosen for (its sha256); a checkpoint that has changed since (a
resumed run) makes it stale, and it is then ignored with a warning. :func:`adkd.deploy.checkpoints.load_model`
applies it, so ``predict``, ``export`` and ``serve`` all use it; ``predict --threshold`` still
overrides it for one call. Its values are read like any value from a file (:mod:`adkd.deploy.trust`).

A unified model (``category=all``) has a threshold per category, and so a file per category:
``last.<category>.threshold.json``, used when that category is asked for (``--category``).
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from adkd.deploy import trust
from adkd.deploy.trust import file_digest
from adkd.errors import CheckpointError, UserError

MAX_BYTES = 64 * 1024  # what adkd writes is a few hundred bytes
KEYS = {
    "category",
    "image_threshold",
    "calibrated_image_threshold",
    "pixel_threshold",
    "calibrated_pixel_threshold",
    "checkpoint_sha256",
    "saved",
}
_SAVING = threading.Lock()  # one Save at a time in this process: the last one saved is the one in use
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Choice:
    """What a threshold file holds: the image threshold, and the pixel threshold where one was
    chosen (None: the calibrated one stays)."""

    image: float
    pixel: float | None = None


def sidecar_path(checkpoint: Path, category: str | None = None) -> Path:
    """The file beside ``checkpoint``; ``category``: one category's of a unified model."""
    return checkpoint.with_name(f"{checkpoint.stem}.{category + '.' if category else ''}threshold.json")


def check_choice(image_threshold: object, where: str = "image_threshold") -> float:
    """A threshold to keep: a finite number (not text, not true/false) that a float32 holds, as the
    model decides in float32. UserError saying what is expected otherwise."""
    if isinstance(image_threshold, bool) or not isinstance(image_threshold, int | float):
        raise UserError(f"{where} must be a number, got {image_threshold!r}.")
    value = float(image_threshold)
    if not abs(value) <= trust.FLOAT32_MAX:  # NaN and the infinities too
        raise UserError(
            f"{where} must be a finite number within float32's range (at most {trust.FLOAT32_MAX:.4g} "
            f"in size), got {image_threshold!r}."
        )
    return value


def save(
    checkpoint: Path,
    image_threshold: float,
    calibrated: float | None,
    category: str | None = None,
    pixel_threshold: float | None = None,
    calibrated_pixel: float | None = None,
) -> Path:
    """Write the chosen image threshold for ``checkpoint`` (``category``'s, of a unified model), and
    the chosen pixel threshold where one is given, both checked first (:func:`check_choice`;
    nothing is written for a bad value) and atomically: a reader never sees half a file, and a
    process killed at any moment leaves the previous choice or the new one. Saves of one process
    take turns; each writes its own temporary file (held with a lock while it lives), which
    :func:`clean_partial` removes if its writer died. ``calibrated``, ``calibrated_pixel``: the
    thresholds training set, kept in the file for the record."""
    value = check_choice(image_threshold)
    pixel = None if pixel_threshold is None else check_choice(pixel_threshold, "pixel_threshold")
    path = sidecar_path(checkpoint, category)
    record = {
        **({"category": category} if category else {}),
        "image_threshold": value,
        "calibrated_image_threshold": calibrated,
        **({"pixel_threshold": pixel, "calibrated_pixel_threshold": calibrated_pixel} if pixel is not None else {}),
        "checkpoint_sha256": file_digest(checkpoint),
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    text = (json.dumps(record, indent=2) + "\n").encode()
    with _SAVING:
        clean_partial(path)
        for attempt in range(3):
            fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # a live writer's file: clean_partial leaves it
                os.write(fd, text)
                os.fsync(fd)
                os.replace(partial, path)
                break
            except FileNotFoundError:  # another process took it for a dead writer's before the lock: again
                if attempt == 2:
                    raise
            finally:
                os.close(fd)
                if os.path.exists(partial):
                    os.unlink(partial)
    return path


def clean_partial(path: Path) -> list[Path]:
    """Remove the temporary files that writers of ``path`` left when they were killed mid-save
    (none is locked by a live process); returns those removed."""
    removed = []
    for partial in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            fd = os.open(partial, os.O_RDONLY)
        except OSError:
            continue  # gone already: renamed into place, or removed
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its writer is alive
        finally:
            os.close(fd)
        try:
            partial.unlink()
            removed.append(partial)
        except OSError:
            pass
    return removed


def chosen(checkpoint: Path, digest: str | None = None, category: str | None = None) -> float | None:
    """The image threshold chosen for ``checkpoint`` as it is now (:func:`choice`), or None."""
    found = choice(checkpoint, digest, category)
    return None if found is None else found.image


def choice(checkpoint: Path, digest: str | None = None, category: str | None = None) -> Choice | None:
    """The thresholds chosen for ``checkpoint`` as it is now (``category``'s, of a unified model),
    or None (no file, or a stale one: then a warning says so). ``digest``: the checkpoint's
    sha256, where the caller has it. The file is read as any file adkd is handed: a value it cannot
    use (not a number, NaN, beyond float32, a key adkd does not write) is refused in one line that
    names the file and what to do. A file without a pixel threshold (written before one could be
    chosen) gives ``pixel`` None."""
    path = sidecar_path(checkpoint, category)
    clean_partial(path)
    if not path.is_file():
        return None

    fix = "delete it (the calibrated threshold is then used) and choose the threshold again (Save in adkd serve)."
    try:
        if path.stat().st_size > MAX_BYTES:
            raise CheckpointError(
                f"Refused {path}: {path.stat().st_size:,} bytes, not a threshold choice adkd wrote; " + fix
            )
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"Cannot read {path} ({err}): {fix}") from err
    if not isinstance(record, dict) or "image_threshold" not in record:
        raise CheckpointError(f"{path} holds no image_threshold: {fix}")
    unknown = sorted(str(k) for k in record if k not in KEYS)
    if unknown:
        raise CheckpointError(
            f"Refused {path}: it holds {', '.join(map(repr, unknown))}, which adkd does not write; " + fix
        )
    try:
        if not isinstance(record["image_threshold"], int | float) or isinstance(record["image_threshold"], bool):
            raise CheckpointError(f"{path} gives image_threshold {record['image_threshold']!r}: expected a number.")
        value = trust.threshold(record["image_threshold"], "image_threshold", path)
        if value is None:
            raise CheckpointError(f"{path} gives no image threshold (NaN).")
        for key in ("calibrated_image_threshold", "calibrated_pixel_threshold"):
            calibrated = record.get(key)
            if calibrated is not None and (isinstance(calibrated, bool) or not isinstance(calibrated, int | float)):
                raise CheckpointError(f"{path} gives {key} {calibrated!r}: expected a number or null.")
        pixel = None
        if "pixel_threshold" in record:
            given = record["pixel_threshold"]
            if not isinstance(given, int | float) or isinstance(given, bool):
                raise CheckpointError(f"{path} gives pixel_threshold {given!r}: expected a number.")
            pixel = trust.threshold(given, "pixel_threshold", path)
            if pixel is None:
                raise CheckpointError(f"{path} gives no pixel threshold (NaN).")
        if record.get("category", category) != category:
            raise CheckpointError(f"{path} is the choice for category {record.get('category')!r}, not {category!r}.")
        stamp = record.get("checkpoint_sha256")
        if not (isinstance(stamp, str) and _SHA256.match(stamp)):
            raise CheckpointError(f"{path} does not name the checkpoint it was chosen for (checkpoint_sha256).")
    except CheckpointError as err:
        raise CheckpointError(f"{str(err).rstrip('.')}: {fix}") from None
    if stamp != (digest or file_digest(checkpoint)):
        print(
            f"warning: {path} was chosen for another version of {checkpoint.name} (the run has trained since): "
            "ignored; the calibrated threshold is used. Choose again with adkd serve.",
            file=sys.stderr,
        )
        return None
    return Choice(value, pixel)


def fingerprint(checkpoint: Path, category: str | None = None) -> str:
    """What an export records of the choice it carries (the sidecar file's sha256, or '' for none),
    so that an export made before a new choice is known to be stale."""
    path = sidecar_path(checkpoint, category)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
