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
    if record.mask_path is None:
        return []
    mask_size, problem = _header(record.mask_path)
    if problem:
        return [f"ground-truth mask {record.mask_path} (for {record.image_path.name}) {problem}"]
    if mask_size != size:
        return [f"mask {record.mask_path} is {mask_size[0]}x{mask_size[1]} but its image is {size[0]}x{size[1]}"]
    return []


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
        raise DataCheckError(f"{dataset}: no training images{which}. It needs normal training images (README, "
                             "Datasets).")  # fmt: skip
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
            log.warning("%s: the test split holds only %s images: image AUROC (and more) will be undefined", where,
                        kind)  # fmt: skip


def sweep_runs(arguments: list[str]) -> list[list[str]]:
    """The overrides of each run ``python -m adkd.run -m <arguments>`` starts: every sweep
    (``category=bottle,cable``, ``seed=range(3)``) expanded, as Hydra's basic sweeper does."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = []
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        if override.is_sweep_override():
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([f"{key}={override.get_value_element_as_str()}"])
    return [list(run) for run in itertools.product(*choices)]


def check_sweeps(sweeps: list[list[str]], report=print) -> list[str]:  # noqa: ANN001
    """Compose each run of each sweep, build its datamodule and check its data as the run will before
    training. ``report`` gets a line for each distinct dataset and category: what it holds, or that it
    will be downloaded. Returns every problem (a bad override, a missing folder, unreadable files)."""
    import json
    import tempfile

    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from adkd.config import compose
    from adkd.data.unified import datamodule as build_datamodule
    from adkd.errors import user_error_in

    problems, seen = [], set()
    with tempfile.TemporaryDirectory() as scratch:
        for run in (run for sweep in sweeps for run in sweep_runs(sweep)):
            try:
                cfg = compose(run, scratch)
                key = json.dumps(OmegaConf.to_container(cfg.dataset, resolve=True), sort_keys=True, default=str)
            except HydraException as err:
                problems.append(f"{' '.join(run)}: {err}")
                continue
            if key in seen:  # another seed, method or setting on the same data
                continue
            seen.add(key)
            name = f"{cfg.dataset_name}/{cfg.category}"
            try:
                datamodule = build_datamodule(cfg.dataset)  # category=all: one per category, joined
            except Exception as err:
                cause = user_error_in(err)
                if cause is None:
                    raise
                problems.append(f"{name}: {cause}")
                continue
            # A unified run (category=all) trains on every category: each is checked as its own run would be.
            members = datamodule.members if datamodule.joins_categories else {None: datamodule}
            for category, member in members.items():
                problems += _check_datamodule(member, name if category is None else f"{name} ({category})", report)
    return problems


def _check_datamodule(datamodule, name: str, report) -> list[str]:  # noqa: ANN001
    """Check one datamodule's files, report what it holds; its problems."""
    from adkd.errors import user_error_in

    try:
        if datamodule.prepares_data() and not datamodule.is_present():
            report(f"{name}: not at {datamodule.root} yet; its run downloads it (dataset.download)")
            return []
        records = datamodule.checked_records()
    except Exception as err:
        cause = user_error_in(err)
        if cause is None:
            raise
        return [f"{name}: {cause}"]
    anomalous = sum(r.gt_label for r in records["test"])
    unset = "" if records["calibration"] else " (no validation images: no thresholds)"
    report(f"{name}: {len(records['train'])} training, {len(records['val'])} validation{unset}, "
           f"{len(records['test'])} test images ({anomalous} anomalous) in {datamodule.root}")  # fmt: skip
    return []


def main(argv: list[str] | None = None) -> int:
    """``python -m adkd.data.check <overrides> [-- <overrides> ...]``: the data of every run the sweeps
    ``python -m adkd.run -m <overrides>`` will start, checked before the first starts (every image and
    mask of every split, from file headers), so that a long series of sweeps does not stop at its
    last dataset on a path. Exit status 1 with every problem listed."""
    import sys

    arguments = sys.argv[1:] if argv is None else argv
    if not arguments or arguments[0] in ("-h", "--help"):
        print(main.__doc__)
        return 0 if arguments else 2
    sweeps = [[]]
    for argument in arguments:
        if argument == "--":
            sweeps.append([])
        else:
            sweeps[-1].append(argument)
    problems = check_sweeps([sweep for sweep in sweeps if sweep])
    if problems:
        print(f"error: {len(problems)} problems with the data of the runs to come:\n" + "\n".join(problems),
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
