"""The data check every run makes before its first training step: every image and mask of the
train, validation and test splits, from file headers (no pixel decoding), all problems reported
at once, each with its file and the fix."""

from __future__ import annotations

import logging
import warnings
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, UnidentifiedImageError

from adkd.data.records import Record
from adkd.errors import DataCheckError

log = logging.getLogger(__name__)
MAX_LISTED = 20


def _header(path) -> tuple[tuple[int, int] | None, str | None]:  # noqa: ANN001
    """(width, height) from the file's header, or the problem with it."""
    try:
        if path.stat().st_size == 0:
            return None, "is empty (0 bytes)"
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return img.size, None
    except FileNotFoundError:
        return None, "does not exist"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, f"declares more than {Image.MAX_IMAGE_PIXELS} pixels (a decompression bomb, or a huge scan)"
    except UnidentifiedImageError:
        return None, "is not a readable image (unknown format, or corrupt)"
    except (OSError, ValueError) as err:
        return None, f"is not a readable image ({type(err).__name__}: {err})"


def _problems(record: Record) -> list[str]:
    size, problem = _header(record.image_path)
    if problem:
        return [f"{record.image_path} {problem}: replace or remove it"]
    problems = []
    for mask in record.mask_paths:
        mask_size, problem = _header(mask)
        if problem:
            problems.append(f"ground-truth mask {mask} (for {record.image_path.name}) {problem}")
        elif mask_size != size:
            problems.append(f"mask {mask} is {mask_size[0]}x{mask_size[1]} but its image is {size[0]}x{size[1]}")
    return problems


def check_records(splits: dict[str, list[Record]], dataset: str) -> None:
    """Raise DataCheckError listing every unusable file; warn where a metric will be undefined.
    Where the records span several categories (a unified run), each file is named with its
    category, and every category must have training images of its own."""
    records = list(dict.fromkeys(r for split in splits.values() for r in split))  # a split may reuse another's
    categories = list(dict.fromkeys(r.category for r in records))
    joined = len(categories) > 1
    trained = {r.category for r in splits.get("train", [])}
    untrained = [c for c in categories if c not in trained] if joined else []
    if not splits.get("train") or untrained:
        which = f" (categories {', '.join(map(str, untrained))})" if untrained else ""
        raise DataCheckError(
            f"{dataset}: no training images{which}. It needs normal training images (README, Datasets)."
        )
    with ThreadPoolExecutor(max_workers=8) as pool:  # header reads wait on the disk, not the CPU
        found = list(pool.map(_problems, records))
    problems = [f"{r.category}: {p}" if joined else p for r, listed in zip(records, found, strict=True) for p in listed]
    if problems:
        listed = "\n  - ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataCheckError(f"{dataset}: {len(problems)} of {len(records)} files cannot be used:\n  - {listed}{more}")
    for category in categories:
        labels = {r.gt_label for r in splits.get("test", []) if r.category == category}
        if len(labels) == 1:
            kind = "normal" if labels == {0} else "anomalous"
            where = f"{dataset} ({category})" if joined else dataset
            log.warning(
                "%s: the test split holds only %s images: image AUROC (and more) will be undefined", where, kind
            )


if __name__ == "__main__":  # the command of earlier versions
    from adkd.moved import forward

    forward("adkd.data.check", "check")
