"""DRAEM-style synthetic anomalies for methods that train on them (ADPS), via anomalib's
Perlin generator: a Perlin-noise mask (scale 2^randint(0, 6) per axis, rotated, thresholded at
0.5) filled with an augmented image from a texture source folder, blended into the image."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# scikit-image's bundled images (CC0 / public domain) serve as the default anomaly source. The
# three textures of the embedded test set (brick, grass, gravel) are left out on purpose, so no
# method trains on pieces of the images it is tested on.
SOURCE_IMAGES = (
    "astronaut",
    "camera",
    "cat",
    "checkerboard",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "rocket",
    "text",
    "cell",
    "retina",
)


def bundled_anomaly_source(folder: str | Path = "~/.cache/adkd/anomaly_source") -> Path:
    """Write the bundled source images into ``folder`` once (256x256 PNGs) and return it."""
    import numpy as np
    import skimage.data
    from PIL import Image

    folder = Path(folder).expanduser()
    done = folder / ".complete"
    if done.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for name in SOURCE_IMAGES:
        array = getattr(skimage.data, name)()
        if array.dtype != np.uint8:
            array = (255 * (array - array.min()) / max(float(np.ptp(array)), 1e-12)).astype(np.uint8)
        image = Image.fromarray(array).convert("RGB").resize((256, 256), Image.BILINEAR)
        image.save(folder / f"{name}.png")
    done.touch()
    return folder


class AnomalySynthesizer(nn.Module):
    """Turns a batch of images in [0, 1] into (augmented images, masks (B,1,H,W) in {0, 1}).

    ``probability``: share of images that get an anomaly (the rest stay normal, mask empty).
    ``blend``: range of the anomaly's weight in the blend; (0.2, 1.0) is DRAEM's beta ~ U(0, 0.8)
    with image = (1 - M) x + (1 - beta) M a + beta M x. Random draws come from torch's generator,
    so runs are reproducible under the run's seed. ``keep_clean``: adkd's datasets also hand on
    each image before its anomaly (``clean``), for methods that learn from both (DeSTSeg); off,
    the loaders carry no second image.
    """

    def __init__(
        self,
        source: str | None = None,
        probability: float = 0.5,
        blend: tuple[float, float] = (0.2, 1.0),
        rotation: tuple[float, float] = (-90.0, 90.0),
        keep_clean: bool = False,
    ) -> None:
        super().__init__()
        self.keep_clean = keep_clean
        from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator

        folder = Path(source).expanduser() if source else bundled_anomaly_source()
        images = [p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif")]
        if not images:
            raise FileNotFoundError(f"No anomaly source images (png/jpg/bmp/tif) under {folder}")
        self.source = folder
        self.generator = PerlinAnomalyGenerator(
            anomaly_source_path=folder,
            probability=probability,
            blend_factor=(float(blend[0]), float(blend[1])),
            rotation_range=(float(rotation[0]), float(rotation[1])),
        )

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        augmented, masks = self.generator(images.float())
        return augmented.clamp(0, 1).to(images.dtype), (masks > 0.5).to(images.dtype)


def anomalous_batch(batch: dict, synthesizer: AnomalySynthesizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images with synthetic anomalies, their masks, the images before them: None unless the
    synthesizer keeps them) for a training batch: the ones adkd's datamodules add in their loaders,
    or, for a batch from any other loader, made here by ``synthesizer`` on the batch's device."""
    if batch.get("synthetic") is not None:
        return batch["image"], batch["gt_mask"], batch.get("clean")
    images, masks = synthesizer(batch["image"])
    return images, masks, batch["image"]
