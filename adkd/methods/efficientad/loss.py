"""EfficientAD's losses (paper and official code): the student's hard feature loss on the teacher's
standardised outputs plus a penalty on ImageNet-like images, and the autoencoder's and the
student's second half's squared errors on augmented images.

Ours: above 2**24 distances (``torch.quantile``'s limit) the 0.999 quantile is taken on a random
sample, and the loss averages every distance at or above it (anomalib averages the sample's)."""

from __future__ import annotations

import torch

from adkd.methods.efficientad.network import sample_elements


def hard_feature_loss(teacher: torch.Tensor, student: torch.Tensor, quantile: float = 0.999) -> torch.Tensor:
    """Squared differences between the standardised teacher (B,C,h,w) and the student's first C
    channels, per element; the mean of those at or above their ``quantile``."""
    distance = (teacher.float() - student[:, : teacher.shape[1]].float()).pow(2)
    with torch.no_grad():
        threshold = torch.quantile(sample_elements(distance.detach()), quantile)
    return distance[distance >= threshold].mean()


def penalty_loss(student_on_penalty_images: torch.Tensor, channels: int) -> torch.Tensor:
    """Mean square of the student's first ``channels`` channels on the penalty images."""
    return student_on_penalty_images[:, :channels].float().pow(2).mean()


def autoencoder_losses(
    teacher_aug: torch.Tensor, ae_aug: torch.Tensor, student_aug_second_half: torch.Tensor
) -> dict[str, torch.Tensor]:
    """On the augmented images: ``ae`` = mean (teacher - autoencoder)^2 (the teacher standardised),
    ``stae`` = mean (autoencoder - student's last C channels)^2. The autoencoder gets gradients
    from both, as in the official code."""
    ae = ae_aug.float()
    return {
        "ae": (teacher_aug.float() - ae).pow(2).mean(),
        "stae": (ae - student_aug_second_half.float()).pow(2).mean(),
    }
