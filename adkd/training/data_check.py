"""The data of every run a sweep will start, checked before the first starts (``adkd check``):
every image and mask of every split, from file headers, so that a long series of sweeps does not
stop at its last dataset on a path."""

from __future__ import annotations

import itertools
import json
import tempfile

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

from adkd.data.unified import datamodule as build_datamodule
from adkd.errors import user_error_in
from adkd.training.config import compose


def sweep_runs(arguments: list[str]) -> list[list[str]]:
    """The overrides of each run ``python -m adkd.run -m <arguments>`` starts: every sweep
    (``category=bottle,cable``, ``seed=range(3)``) expanded, as Hydra's basic sweeper does."""
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
    report(
        f"{name}: {len(records['train'])} training, {len(records['val'])} validation{unset}, "
        f"{len(records['test'])} test images ({anomalous} anomalous) in {datamodule.root}"
    )
    return []
