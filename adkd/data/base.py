"""Shared datamodule: a dataset subclass only says which records make up train and test."""

from __future__ import annotations

import copy
import random
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from adkd.data.check import check_records
from adkd.data.dataset import AnomalyDataset
from adkd.data.download import download
from adkd.data.records import Record, leaving_root, refuse
from adkd.data.synthesis import AnomalySynthesizer
from adkd.errors import ConfigError

ALL_CATEGORIES = "all"  # category=all: one model on every category (the unified protocol, adkd.data.unified)


class SeededSampler(Sampler):
    """Training order, and a seed for each sample's random augmentation (synthetic anomalies),
    from the run's seed and the epoch alone.

    torch's RandomSampler draws from the global generator, whose state at an epoch's start
    depends on how the loader's workers were started; a resumed run would then see other orders
    and other anomalies than the uninterrupted one. Here (seed, epoch) fixes both, whatever the
    number of workers. Under DDP each rank takes its share (padded to equal length), so the
    trainer's own distributed sampler is switched off (``use_distributed_sampler: false``).
    """

    def __init__(self, size: int, seed: int | None = None) -> None:
        self.size = size
        self.seed = torch.initial_seed() if seed is None else seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch's start
        self.epoch = epoch

    def _shard(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        _, world = self._shard()
        return -(-self.size // world)

    def __iter__(self):
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch)) & (2**63 - 1))
        order = torch.randperm(self.size, generator=generator).tolist()
        seeds = torch.randint(0, 2**62, (self.size,), generator=generator).tolist()
        pairs = list(zip(order, seeds, strict=True))
        rank, world = self._shard()
        pairs += pairs[: len(self) * world - len(pairs)]  # equal shares: every rank takes as many steps
        return iter(pairs[rank::world])


class AnomalyDataModule(L.LightningDataModule):
    """Train on normal images, validate on held-out normal training images, test on the test split.

    Validation never touches the test split: ``val_fraction`` of the normal training images are
    held out (the same ones for every run, whatever the seed) and used to track the loss.
    ``synthesis``: the synthetic anomalies a method trains on (its yaml's ``synthesis``:
    :class:`~adkd.data.synthesis.AnomalySynthesizer` settings), added to the training and validation
    images in the loader's workers; None for methods that train on normal images only.
    ``evaluate="validation"`` scores a dataset's labelled validation split (real anomalies, see
    :meth:`labelled_validation`) in place of its test split: settings are chosen on it, never on
    the test split. Its thresholds are then set on the images they are scored on, so only the
    threshold-free metrics (AUROC, AP, AUPRO) mean what they say.
    Subclasses set ``name``, ``categories`` (empty = any), ``default_category``, ``has_masks``
    and implement ``records(split)``. ``category="all"`` is not one of them: it is the unified
    protocol, whose datamodule (:func:`adkd.data.unified.datamodule`) joins one of these per category.
    """

    name = "dataset"
    categories: tuple[str, ...] = ()
    default_category: str | None = None
    has_masks = True
    joins_categories = False  # True for the unified protocol's datamodule only

    def __init__(
        self,
        root: str | None = None,
        category: str | None = None,
        image_size: int = 256,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        cache: bool = False,
        limit_train: int | None = None,
        limit_test: int | None = None,
        synthesis: dict | None = None,
        evaluate: str = "test",
        download: bool = False,
    ) -> None:
        super().__init__()
        self.download = download
        if not root and self.download_name:  # a benchmark with a download: datasets/<name> by default
            root = f"datasets/{self.name}"
        if evaluate not in ("test", "validation"):
            raise ConfigError(f"evaluate must be 'test' or 'validation', got {evaluate!r}")
        self.evaluate = evaluate
        self.synthesis = synthesis
        self.root = Path(root).expanduser() if root else None
        self.category = category or self.default_category
        if self.category == ALL_CATEGORIES and not self.joins_categories:
            raise ConfigError(
                f"category={ALL_CATEGORIES} (one model on every category) is not a category of {self.name}: "
                "build it with adkd.data.unified.datamodule(dataset config), as adkd.run does."
            )
        if self.categories and self.category not in self.categories:
            raise ConfigError(
                f"Unknown category {self.category!r} for dataset {self.name}. "
                f"Valid categories: {', '.join(self.categories)}."
            )
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.cache = cache
        self.limit_train = limit_train
        self.limit_test = limit_test
        self._records: dict[str, list[Record]] | None = None
        if not self.prepares_data():
            self.check_available()  # fail at once, before any model is built

    # -- what subclasses provide -------------------------------------------------------------
    download_name: str | None = None  # set where adkd can download the dataset (dataset.download=true)

    def is_present(self) -> bool:
        """Whether the data is where the config says (cheap: a folder or file exists)."""
        return True

    def prepares_data(self) -> bool:
        """True where ``prepare_data`` will download or generate the data (so it may be absent now)."""
        return bool(self.download)

    def prepare_data(self) -> None:
        """Download or generate the data if it is not there. Lightning calls this once per node,
        on its first process, before any ``setup``: under DDP no two ranks download or generate."""
        if self.download and not self.is_present():
            download(self.download_name, self.root)

    def check_available(self) -> None:
        """Raise DatasetNotFoundError with a helpful message if the data is not there."""

    def records(self, split: str) -> list[Record]:
        raise NotImplementedError

    @classmethod
    def category_names(cls, root: str | None) -> tuple[str, ...]:
        """The categories a unified run (``category=all``) joins: the dataset's list."""
        return cls.categories

    def labelled_validation(self) -> list[Record] | None:
        """A validation split of the dataset's own, if it has one: normal images (the loss is tracked
        and the thresholds are set on them), and anomalous ones where it has them (scored as
        ``val/labelled_<metric>``). Without one, validation holds out ``val_fraction`` of the normal
        training images."""
        return None

    # -- shared machinery ---------------------------------------------------------------------
    def _split_train_val(self, train: list[Record]) -> tuple[list[Record], list[Record]]:
        normal = [r for r in train if r.gt_label == 0]
        order = list(range(len(normal)))
        random.Random(0).shuffle(order)
        n_val = int(round(len(normal) * self.val_fraction)) if len(normal) > 1 else 0
        val = [normal[i] for i in sorted(order[:n_val])]
        fit = [normal[i] for i in sorted(order[n_val:])]
        return fit, val

    @staticmethod
    def _limit(records: list[Record], n: int | None) -> list[Record]:
        """Keep ``n`` records spread over the list (both classes stay represented in a sorted test)."""
        if n is None or n >= len(records):
            return records
        step = len(records) / n
        return [records[int(i * step)] for i in range(n)]

    def checked_records(self) -> dict[str, list[Record]]:
        """The train, val and test records, every file checked once (before any training step)."""
        if self._records is None:
            records = self.split_records()
            check_records(records, f"{self.name}/{self.category}" if self.category else self.name)
            self._records = records
        return self._records

    def split_records(self) -> dict[str, list[Record]]:
        """The train, val, calibration and test records, not yet checked, each carrying this
        datamodule's category. ``calibration`` is ``val`` itself (the same list) unless the dataset
        has a labelled validation split."""
        self.check_available()
        labelled = self._own(self.labelled_validation())
        if labelled is None:
            fit, val = self._split_train_val(self._own(self.records("train")))
            calibration = val
        else:  # the loss is validated on its normal images; thresholds see all of it
            fit = [r for r in self._own(self.records("train")) if r.gt_label == 0]
            val, calibration = [r for r in labelled if r.gt_label == 0], labelled
        splits = {
            "train": self._limit(fit, self.limit_train),
            "val": val,
            "calibration": calibration,
            "test": self._limit(self._evaluated(labelled), self.limit_test),
        }
        every = [r for split in splits.values() for r in split]
        refuse(leaving_root(every, self.root), f"{self.name}/{self.category}" if self.category else self.name)
        return splits

    def _own(self, records: list[Record] | None) -> list[Record] | None:
        """``records`` marked with this datamodule's category (where a reader left it unset)."""
        if records is None or self.category is None:
            return records
        return [r if r.category is not None else replace(r, category=self.category) for r in records]

    def _evaluated(self, labelled: list[Record] | None) -> list[Record]:
        if self.evaluate == "test":
            return self._own(self.records("test"))
        if not labelled or all(r.gt_label == 0 for r in labelled):
            raise ConfigError(
                f"evaluate=validation needs a labelled validation split with anomalous images, and "
                f"{self.name} has none here (a folder dataset's <category>/val/{{good,<defect>}}; ELPV's real defects)"
            )
        return labelled

    def setup(self, stage: str | None = None) -> None:
        records = self.checked_records()
        if stage in (None, "fit", "validate") and not hasattr(self, "train_set"):
            self.train_set = AnomalyDataset(records["train"], self.image_size, self.cache)
            self.val_set = AnomalyDataset(records["val"], self.image_size, self.cache)
            if self.synthesis is not None:
                self.set_synthesizer(AnomalySynthesizer(**self.synthesis))
        if stage in (None, "test", "predict") and not hasattr(self, "test_set"):
            self.test_set = AnomalyDataset(records["test"], self.image_size, self.cache)

    def set_synthesizer(self, synthesizer) -> None:  # noqa: ANN001
        """Training samples get synthetic anomalies from ``synthesizer`` (fresh each epoch), in the
        loader's workers; validation samples too, the same ones every epoch."""
        self.train_set.synthesizer = self.val_set.synthesizer = synthesizer
        self.val_set.fixed_synthesis = True

    def calibration_dataloader(self) -> DataLoader:
        """The validation images as they are (no synthetic anomalies; a labelled validation split's
        anomalous images too): what thresholds are set on."""
        records = self.checked_records()["calibration"]
        if records is self.checked_records()["val"]:
            dataset = copy.copy(self.val_set)  # shares the decoded images
            dataset.synthesizer = None
        else:
            dataset = AnomalyDataset(records, self.image_size, self.cache)
        return self._loader(dataset, False, self.eval_batch_size)

    def synthetic_validation_dataloader(self, synthesizer) -> DataLoader:  # noqa: ANN001
        """The normal validation images twice: as they are, and each with a synthetic anomaly from
        ``synthesizer`` (the same one for a given image in every run): a pixel-level validation set
        made without the test split."""
        clean, forged = copy.copy(self.val_set), copy.copy(self.val_set)
        clean.synthesizer = None
        forged.synthesizer, forged.fixed_synthesis = synthesizer, True
        return self._loader(torch.utils.data.ConcatDataset([clean, forged]), False, self.eval_batch_size)

    def _loader(self, dataset: AnomalyDataset, shuffle: bool, batch_size: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=SeededSampler(len(dataset)) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            multiprocessing_context=_worker_start_method() if self.num_workers > 0 else None,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False, self.eval_batch_size)


def _worker_start_method() -> str | None:
    """How loader workers start. Inside a joblib worker (hydra/launcher=parallel) the default is
    loky's own method, which cannot start them (its pickler fails on the loader's arguments): use
    the platform's standard one there."""
    import multiprocessing

    if multiprocessing.get_start_method(allow_none=True) == "loky":
        return multiprocessing.get_all_start_methods()[0]
    return None
