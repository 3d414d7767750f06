"""PatchCore's greedy k-center coreset: anomalib's ``KCenterGreedy`` selection rule (the same
sparse random projection, used for the selection only, and the same random first centre), with
the distance update done as one matrix-vector product per step.

anomalib's loop computes ``norm(features - centre)`` each step, which allocates and reads an N x d
difference for every selected point; here the squared norms are computed once and each step reads
the projected features once (``|x|^2 - 2 x.c + |c|^2``). The same selection (``tests/test_patchcore.py``
checks the indices equal anomalib's; at larger sizes the order may differ where two candidates tie to
float32 precision), several times faster (``experiments/coreset_speed.py``, part of ``make bench``;
the measured times are in README.md beside this file).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm


def greedy_coreset(features: torch.Tensor, keep: int, progress: bool = True) -> torch.Tensor:
    """Indices of ``keep`` rows of ``features`` (N, D), each the farthest from those chosen before."""
    from anomalib.models.components.dimensionality_reduction import SparseRandomProjection

    projection = SparseRandomProjection(eps=0.9)
    projection.fit(features)
    projected = projection.transform(features).float().contiguous()
    squared = projected.pow(2).sum(1)
    index = torch.randint(high=len(projected), size=(1,), device=projected.device).squeeze()
    chosen = [index]
    nearest = None  # squared distance of each row to its nearest chosen centre
    for _ in tqdm(range(keep - 1), desc="PatchCore coreset", unit="patch", disable=not progress, mininterval=1):
        centre = projected[index]
        distance = (squared - 2 * (projected @ centre) + squared[index]).clamp_min_(0)
        nearest = distance if nearest is None else torch.minimum(nearest, distance, out=nearest)
        index = nearest.argmax()
        nearest[index] = 0
        chosen.append(index)
    return torch.stack(chosen)
