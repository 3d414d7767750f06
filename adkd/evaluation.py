"""Test-time evaluation as one callback (configured in conf/run.yaml): the metrics (threshold-free,
and at the calibrated threshold), inference time, per-image scores, figures, plots
(:mod:`adkd.report.plots`), ``metrics.json``, the W&B summary and the printed summary. The Python
API and the CLI write the same run folder.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import lightning as L
import torch

from adkd.metrics import AnomalyMetrics
from adkd.report.plots import WorstCases


class Evaluation(L.Callback):
    """Scores the test split from the model's (anomaly_map, pred_score) per batch.

    ``run``: what metrics.json says of the run beside its metrics (method, label, dataset,
    backbone, pretrained, image_size, max_epochs, seed, overrides, tags, threshold_fpr), given by
    the config (conf/run.yaml). The validation metrics (:class:`adkd.callbacks.SyntheticValidation`)
    are read from ``trainer.callback_metrics`` when training ends."""

    def __init__(self, output_dir: str, num_figures: int = 8, run: dict | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.num_figures = num_figures
        self.run = dict(run or {})
        self.validation: dict | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from adkd.metrics.collection import METRIC_NAMES

        found = {k[4:]: float(v) for k, v in trainer.callback_metrics.items()
                 if k.startswith("val/") and k[4:].removeprefix("labelled_") in METRIC_NAMES}  # fmt: skip
        self.validation = found or None

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        self.pixel = bool(datamodule.has_masks) if datamodule is not None else True
        self.metrics = AnomalyMetrics(pixel=self.pixel)
        self.figures: list[dict] = []
        self.predictions: list[dict] = []
        self.worst = WorstCases(self.num_figures // 2)
        self.seconds, self.images = 0.0, 0

    def on_test_batch_start(self, trainer, pl_module, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:  # noqa: ANN001
        _sync(batch["image"])
        self._start = time.perf_counter()

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch: dict, batch_idx: int, dataloader_idx: int = 0
    ) -> None:  # noqa: ANN001, E501
        anomaly_map, pred_score = outputs
        _sync(anomaly_map)
        self.seconds += time.perf_counter() - self._start
        self.images += len(pred_score)
        self.metrics.update(pred_score, batch["gt_label"], anomaly_map, batch["gt_mask"])
        labels, scores = batch["gt_label"].tolist(), pred_score.tolist()  # one copy to the host a batch
        rows = zip(batch["image_path"], labels, scores, strict=True)
        self.predictions += [{"image_path": p, "gt_label": int(y), "pred_score": float(s)} for p, y, s in rows]
        self._keep_figures(batch, anomaly_map, pred_score, labels, scores)

    def _keep_figures(self, batch: dict, anomaly_map: torch.Tensor, pred_score: torch.Tensor, labels: list[int],
                      scores: list[float]) -> None:  # fmt: skip
        """Keep up to ``num_figures`` samples, half anomalous and half normal where possible, and
        offer every sample to the worst false alarms and escapes (``num_figures // 2`` of each)."""
        for i, label in enumerate(labels):
            self.worst.offer(scores[i], label, lambda i=i: _sample(batch, anomaly_map, pred_score, i))
            same = sum(f["gt_label"] == label for f in self.figures)
            if same >= (self.num_figures + 1) // 2 or len(self.figures) >= self.num_figures:
                continue
            self.figures.append(_sample(batch, anomaly_map, pred_score, i))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = self.metrics.compute()
        post = pl_module.post
        if post.calibrated:
            metrics.update(self.metrics.at_threshold(float(post.image_threshold)))
        metrics["inference_ms_per_image"] = 1000 * self.seconds / max(self.images, 1)
        for name, value in metrics.items():
            if value is not None:
                pl_module.log(f"test/{name}", value)
        results = self._describe(trainer, pl_module, metrics)
        self._write(trainer, results)

    def _describe(self, trainer: L.Trainer, pl_module: L.LightningModule, metrics: dict) -> dict:
        run, post = self.run, pl_module.post
        method = run.get("method") or type(pl_module).__name__.lower()
        return {
            "method": method,
            "label": run.get("label") or method,
            "dataset": run.get("dataset"),
            "category": getattr(trainer.datamodule, "category", None),
            "split": getattr(trainer.datamodule, "evaluate", "test"),  # what "metrics" scored (evaluate=)
            **{key: run.get(key) for key in ("backbone", "pretrained", "image_size", "max_epochs", "seed")},
            "overrides": list(run.get("overrides") or []),
            "tags": list(run.get("tags") or []),
            "pixel_metrics": self.pixel,
            "thresholds": {
                "fpr": run.get("threshold_fpr"),
                "image": _number(post.image_threshold),
                "pixel": _number(post.pixel_threshold),
            },  # fmt: skip
            "metrics": metrics,
            "validation": self.validation,
        }

    def _write(self, trainer: L.Trainer, results: dict) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "metrics.json").write_text(json.dumps(results, indent=2))
        with (self.output_dir / "test_predictions.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["image_path", "gt_label", "pred_score"])
            writer.writeheader()
            writer.writerows(self.predictions)
        figures = self._save_figures(trainer.lightning_module, self.output_dir / "figures")
        from adkd.report.plots import write_plots

        plots = write_plots(self.output_dir / "plots", self.predictions, trainer.lightning_module.post, self.worst,
                            self.metrics.pixel_pr_curve(), results["metrics"].get("pixel_ap"))  # fmt: skip
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                if figures:
                    logger.log_image(key="test/figures", images=[str(p) for p in figures])
                for key, paths in _plot_keys(plots).items():
                    logger.log_image(key=key, images=[str(p) for p in paths])
                summary = {f"test/{k}": v for k, v in results["metrics"].items() if v is not None}
                logger.experiment.summary.update(summary)
        print(summary_text(results, self.output_dir), flush=True)

    def _save_figures(self, pl_module: L.LightningModule, folder: Path) -> list[Path]:
        """One overlay per kept sample (adkd.report.panels, as predict draws them), with the
        ground truth outlined."""
        from adkd.report.plots import draw_sample

        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, s in enumerate(self.figures):
            kind = "anomalous" if s["gt_label"] else "normal"
            path = Path(s["image_path"])
            paths.append(folder / f"{i:02d}_{kind}.png")
            draw_sample(pl_module.post, s, f"{kind}: {path.parent.name}/{path.name}, score {s['pred_score']:.4g}",
                        paths[-1])  # fmt: skip
        return paths


def _sample(batch: dict, anomaly_map: torch.Tensor, pred_score: torch.Tensor, i: int) -> dict:
    """The ``i``-th image of a batch with its map and mask, on the CPU, for drawing after the test."""
    return {
        "image": batch["image"][i].cpu(), "anomaly_map": anomaly_map[i, 0].cpu(),
        "gt_mask": batch["gt_mask"][i, 0].cpu(), "gt_label": int(batch["gt_label"][i]),
        "pred_score": float(pred_score[i]), "image_path": batch["image_path"][i],
    }  # fmt: skip


def _plot_keys(plots: list[Path]) -> dict[str, list[Path]]:
    """W&B keys: one per curve (``test/plots/image_roc``), one per kind of worst image (``test/worst_fp``)."""
    keys: dict[str, list[Path]] = {}
    for path in plots:
        stem = path.stem
        key = f"test/{stem.rsplit('_', 1)[0]}" if stem.startswith("worst_") else f"test/plots/{stem}"
        keys.setdefault(key, []).append(path)
    return keys


def summary_text(results: dict, output_dir: Path) -> str:
    m = results["metrics"]
    width = max(len(k) for k in m)
    lines = [f"\n{results['method']} on {results['dataset']}/{results['category']} ({results['backbone']})"]
    lines += [f"  {k:<{width}}  {'n/a' if v is None else f'{v:.4f}'}" for k, v in m.items()]
    if not results["pixel_metrics"]:
        lines.append("  (no pixel masks in this dataset: image-level metrics only)")
    if any(v is None for v in m.values()):
        lines.append("  (n/a: undefined on this test split; see the warning above)")
    lines.append(f"Outputs: {output_dir}")
    return "\n".join(lines)


def _sync(tensor: torch.Tensor) -> None:
    if tensor.is_cuda:
        torch.cuda.synchronize()


def _number(value: torch.Tensor) -> float | None:
    value = float(value)
    return None if value != value else value  # NaN (never calibrated) -> null
