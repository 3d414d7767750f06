"""Overlay figures: image | anomaly map | ground truth, one row per test sample."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_figures(samples: list[dict], folder: Path) -> list[Path]:
    """Write one PNG per sample into ``folder``; the map's colour scale is shared across samples."""
    folder.mkdir(parents=True, exist_ok=True)
    if not samples:
        return []
    vmax = max(float(s["anomaly_map"].max()) for s in samples)
    vmin = min(float(s["anomaly_map"].min()) for s in samples)
    paths = []
    for i, s in enumerate(samples):
        fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
        image = s["image"].clamp(0, 1).permute(1, 2, 0).numpy()
        axes[0].imshow(image)
        path = Path(s["image_path"])
        kind = "anomalous" if s["gt_label"] else "normal"
        axes[0].set_title(f"{kind}: {path.parent.name}/{path.name}", fontsize=8)
        axes[1].imshow(image)
        heat = axes[1].imshow(s["anomaly_map"].float().numpy(), cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax)
        fig.colorbar(heat, ax=axes[1], fraction=0.046, pad=0.04)
        axes[1].set_title(f"anomaly map (score {s['pred_score']:.3g})", fontsize=8)
        axes[2].imshow(s["gt_mask"].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[2].set_title("ground truth", fontsize=8)
        for ax in axes:
            ax.axis("off")
        fig.tight_layout()
        path = folder / f"{i:02d}_{'anomalous' if s['gt_label'] else 'normal'}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths
