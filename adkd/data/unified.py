"""The unified protocol (``category=all``): one model trained on the normal training images of
every category of a dataset, then tested on each category's test split (the multi-class setting
of UniAD, Dinomaly and the ADer benchmark, against the per-category models of the older tables).

:func:`datamodule` builds one datamodule per category, exactly as a per-category run would, and
joins them in a :class:`UnifiedDataModule`: each category keeps its own split (its validation
hold-out, or its labelled validation split; its test split), and the union of the pieces is
what the run trains, validates and tests on. Every record carries its category
(:class:`~adkd.data.records.Record`), so that thresholds are set per category from that category's
own validation images (:class:`adkd.training.callbacks.Calibrate`) and the test is scored per category
(:class:`adkd.training.evaluation.Evaluation`).

The losses tracked during training and the validation metrics (synthetic anomalies, a labelled
validation split) are computed over the union: one model, one objective.
"""

from __future__ import annotations

from adkd.data.base import ALL_CATEGORIES, AnomalyDataModule
from adkd.data.records import Record
from adkd.errors import ConfigError


def datamodule(config, **overrides) -> AnomalyDataModule:  # noqa: ANN001
    """The datamodule of a dataset config (``dataset`` in the run config): the category's, or with
    ``category: all`` one for every category of the dataset joined in a :class:`UnifiedDataModule`.
    ``overrides``: constructor arguments that replace the config's (as Hydra's ``instantiate``)."""
    from hydra.utils import get_class, instantiate

    if config.get("category") != ALL_CATEGORIES:
        return instantiate(config, **overrides)
    member = get_class(config["_target_"])
    names = member.category_names(overrides.get("root", config.get("root")))
    if len(names) < 2:
        has = f"only one, {names[0]}: run category={names[0]}" if names else "no list of categories"
        raise ConfigError(
            f"category={ALL_CATEGORIES} trains one model on every category of a dataset, and {member.name} has {has}. "
            f"It is for datasets with several categories (mvtec, visa, realiad, textures, cells, parts, elpv, or a folder of "
            f"categories in the MVTec AD layout)."
        )
    return UnifiedDataModule({name: instantiate(config, **{**overrides, "category": name}) for name in names})


class UnifiedDataModule(AnomalyDataModule):
    """Several categories' datamodules (``members``, by category) as one: the union of their
    records, split per category. ``category`` is ``"all"``; ``categories`` the members' names."""

    joins_categories = True

    def __init__(self, members: dict[str, AnomalyDataModule]) -> None:
        first = next(iter(members.values()))
        self.members = members
        self.name = first.name
        # The limits (limit_train, limit_test) are each category's: the members apply them.
        super().__init__(
            category=ALL_CATEGORIES,
            image_size=first.image_size,
            batch_size=first.batch_size,
            eval_batch_size=first.eval_batch_size,
            num_workers=first.num_workers,
            val_fraction=first.val_fraction,
            cache=first.cache,
            synthesis=first.synthesis,
            evaluate=first.evaluate,
        )
        self.categories = tuple(members)

    @property
    def has_masks(self) -> bool:
        """Whether every category has pixel masks (the test scores each category by its own)."""
        return all(bool(m.has_masks) for m in self.members.values())

    def prepares_data(self) -> bool:
        return any(m.prepares_data() for m in self.members.values())

    def prepare_data(self) -> None:
        for member in self.members.values():
            member.prepare_data()

    def check_available(self) -> None:
        for member in self.members.values():
            member.check_available()

    def split_records(self) -> dict[str, list[Record]]:
        """Each category's split (its own validation hold-out and test split), joined; the data check
        (:meth:`checked_records`) then names each bad file's category."""
        parts = [m.split_records() for m in self.members.values()]
        joined = {split: [r for part in parts for r in part[split]] for split in ("train", "val", "test")}
        own_calibration = any(part["calibration"] is not part["val"] for part in parts)
        joined["calibration"] = [r for p in parts for r in p["calibration"]] if own_calibration else joined["val"]
        return joined
