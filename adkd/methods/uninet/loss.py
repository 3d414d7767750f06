"""UniNet's training objective: feature selection on the student's side, then per pair a cosine
term, a contrastive term over positions and a margin term (the official ``Loss.losses`` and
``DFS``, unsupervised: no masks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def select_features(students: list[torch.Tensor], teachers: list[torch.Tensor]) -> list[torch.Tensor]:
    """Domain-related feature selection: each student map weighted, per channel, by the softmax over
    positions of the paired teacher map, times 1 + that teacher channel's spatial mean.

    The official ``DomainRelated_Feature_Selection`` also declares a learnable theta per channel
    (1 at its start) in place of the 1; it creates each with ``nn.Parameter(...).to("cuda")``,
    which returns a plain tensor that the module does not register, so no optimiser ever sees
    theta and it stays 1 through training. This is that computation."""
    selected = []
    for s, t in zip(students, teachers, strict=True):
        b, c, h, w = t.shape
        weights = t.reshape(b, c, h * w).softmax(dim=-1).reshape(b, c, h, w)
        selected.append(s * weights * (1 + t.mean(dim=(2, 3), keepdim=True)))
    return selected


def uninet_loss(
    teachers: list[torch.Tensor],
    students: list[torch.Tensor],
    temperature: float = 2.0,
    margin: float = 1.0,
    cosine_weight: float = 0.7,
) -> dict[str, torch.Tensor]:
    """Sum over the pairs of ``cosine_weight`` x mean(1 - cos) + (1 - ``cosine_weight``) x the
    contrastive term + the margin term. Per image, the student's position i is contrasted with
    every teacher position j (cosine / ``temperature``, softmax over j): the contrastive term is
    -log p(i, i), the margin term max(0, ``margin`` - p(i, i)), both averaged over positions and
    images. Teachers are not detached: the target teacher learns from this loss too (the official
    code's ``stop_gradient=False`` for industrial data). In float32, under AMP too: the softmax
    sums thousands of exponentials."""
    cosine = contrast = hinge = 0
    for t, s in zip(teachers, students, strict=True):
        t = F.normalize(t.float().flatten(2).transpose(1, 2), dim=2)  # (B, positions, C)
        s = F.normalize(s.float().flatten(2).transpose(1, 2), dim=2)
        cosine = cosine + (1 - (s * t).sum(2)).mean()
        logits = s @ t.transpose(1, 2) / temperature  # (B, positions, positions)
        diagonal = (logits.diagonal(dim1=1, dim2=2) - _log_sum_exp(logits, 1 / temperature)).exp()
        contrast = contrast + -(diagonal + 1e-8).log().mean()
        hinge = hinge + F.relu(margin - diagonal).mean()
    loss = cosine_weight * cosine + (1 - cosine_weight) * contrast + hinge
    return {"loss": loss, "cosine": cosine, "contrast": contrast, "margin": hinge}


def _log_sum_exp(logits: torch.Tensor, bound: float) -> torch.Tensor:
    """log(sum(exp)) over the last dimension. The logits are cosines / T, within +-``bound``: up to
    a bound of 50 the plain sum cannot overflow float32 (e^50 times a billion positions), and it
    saves logsumexp's passes for the maximum over matrices of positions x positions."""
    if bound <= 50:
        return logits.exp().sum(dim=-1).log()
    return logits.logsumexp(dim=-1)
