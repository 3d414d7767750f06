"""PatchCore as a LightningModule: one pass over the training images fills the memory bank;
nothing is optimised."""

from __future__ import annotations

import logging

import torch

from adkd.methods.base import AnomalyModule
from adkd.methods.patchcore.coreset import greedy_coreset
from adkd.methods.patchcore.network import PatchCoreNetwork

log = logging.getLogger(__name__)


class PatchCore(AnomalyModule):
    """See :mod:`adkd.methods.patchcore.network` (conf/method/patchcore.yaml)."""

    def __init__(self, network: PatchCoreNetwork, coreset_ratio: float = 0.1, **shared) -> None:  # noqa: ANN003
        super().__init__(network, **shared)
        if not 0 < coreset_ratio <= 1:
            raise ValueError(f"coreset_ratio is the share of patch features kept, in (0, 1]; got {coreset_ratio}")
        self.coreset_ratio = coreset_ratio
        self.automatic_optimization = False  # nothing to optimise: training collects features
        self._collected: list[torch.Tensor] = []

    def configure_optimizers(self) -> None:
        return None

    def early_stopping_phase(self) -> None:
        return None  # one pass, then done

    def training_step(self, batch: dict, batch_idx: int) -> None:
        if self.current_epoch == 0:
            self._collected.append(self.network.flatten(self.network(batch["image"])))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pass  # no loss to watch: the memory bank is the model

    def on_train_epoch_end(self) -> None:
        """Build the memory bank after the first pass; the run ends there, whatever max_epochs says."""
        if self._collected:
            self.network.memory_bank = self.select_coreset(torch.cat(self._collected))
            self._collected = []
        self.trainer.should_stop = True

    @torch.no_grad()
    def fit_example(self, images: torch.Tensor) -> None:
        """A memory bank of ``images``' patch features (all of them: no coreset), for speed checks."""
        self.network.memory_bank = self.network.flatten(self.network(images))

    def select_coreset(self, features: torch.Tensor) -> torch.Tensor:
        """Greedy k-center coreset of ``coreset_ratio`` of the features (anomalib's KCenterGreedy rule)."""
        if self.trainer.world_size > 1:  # every rank saw a shard: all of them go into the bank
            features = self.all_gather(features).reshape(-1, features.shape[1])
        keep = max(1, int(len(features) * self.coreset_ratio))
        if keep >= len(features):
            return features

        log.info("PatchCore: selecting %d of %d patch features (greedy coreset)", keep, len(features))
        return features[greedy_coreset(features, keep, progress=self.trainer.is_global_zero)]
