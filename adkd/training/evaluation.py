"""Test-time evaluation as one callback (configured in conf/run.yaml): the metrics (threshold-free,
and at the calibrated threshold), inference time, per-image scores, figures, plots
(:mod:`adkd.report.plots`), ``metrics.json``, the W&B summary and the printed summary, per category
for a unified run (``category=all``). The Python API and the CLI write the same run folder.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import lightning as L
import torch

from adkd.metrics import AnomalyMetrics
from adkd.metrics.names import KIND_MEAN, KIND_METRICS, KIND_SPRO_METRICS, METRIC_NAMES, SPRO_MEAN
from adkd.metrics.samples import sample_metrics
from adkd.metrics.spro import SPRO, SPRO_LIMITS
from adkd.report.plots import WorstCases, draw_sample, write_plots
from adkd.training.callbacks import TrainingLength

SUMMARY_PER_CATEGORY = (
    "image_auroc",
    "sample_auroc",
    "pixel_auroc",
    "pixel_aupro",
    "image_f1",
)  # printed per category (unified)


class _Tally:
    """What the test keeps of one category's images (of all of them, for a run of one category):
    metrics, per-image rows, the samples drawn as figures, the worst false alarms and escapes."""

    def __init__(self, pixel: bool, num_figures: int) -> None:
        self.pixel, self.num_figures = pixel, num_figures
        self.metrics = AnomalyMetrics(pixel=pixel)
        self.figures: list[dict] = []
        self.predictions: list[dict] = []
        self.worst = WorstCases(num_figures // 2)
        self.samples: list[str] = []  # the part each image shows, where the dataset names it (Real-IAD multi-view)
        self.kind_spro: dict[str, SPRO] = {}  # MVTec LOCO AD: AU-sPRO of the normal images and one kind of anomaly

    def add(self, batch: dict, anomaly_map: torch.Tensor, pred_score: torch.Tensor) -> None:
        regions = {k: batch[k] for k in ("gt_regions", "gt_saturation") if k in batch}  # MVTec LOCO's sPRO
        self.metrics.update(pred_score, batch["gt_label"], anomaly_map, batch["gt_mask"], **regions)
        labels, scores = batch["gt_label"].tolist(), pred_score.tolist()  # one copy to the host a batch
        defects = batch.get("defect") or ["good" if y == 0 else "" for y in labels]
        rows = zip(batch["image_path"], labels, defects, scores, strict=True)
        self.predictions += [
            {"image_path": p, "gt_label": int(y), "defect": d, "pred_score": float(s)} for p, y, d, s in rows
        ]
        if "sample" in batch:
            self.samples += list(batch["sample"])
        if "gt_regions" in batch:
            for kind in KIND_SPRO_METRICS:
                chosen = [i for i, (y, d) in enumerate(zip(labels, defects, strict=True)) if y == 0 or d == kind]
                if chosen:
                    spro = self.kind_spro.setdefault(kind, SPRO())
                    spro.update(anomaly_map[chosen], batch["gt_regions"][chosen], batch["gt_saturation"][chosen])
        self._keep_figures(batch, anomaly_map, pred_score, labels, scores)

    def _keep_figures(
        self, batch: dict, anomaly_map: torch.Tensor, pred_score: torch.Tensor, labels: list[int], scores: list[float]
    ) -> None:
        """Keep up to ``num_figures`` samples, half anomalous and half normal where possible, and
        offer every sample to the worst false alarms and escapes (``num_figures // 2`` of each)."""
        for i, label in enumerate(labels):
            self.worst.offer(scores[i], label, lambda i=i: _sample(batch, anomaly_map, pred_score, i))
            same = sum(f["gt_label"] == label for f in self.figures)
            if same >= (self.num_figures + 1) // 2 or len(self.figures) >= self.num_figures:
                continue
            self.figures.append(_sample(batch, anomaly_map, pred_score, i))

    def decided(self, post: torch.nn.Module) -> list[dict]:
        """The rows with their normalised score (0.5 = the image threshold) and decision, where the
        model has a threshold."""
        if not post.calibrated or not self.predictions:
            return [{**row, "normalized_score": None, "decision": "no threshold"} for row in self.predictions]
        threshold = float(post.image_threshold)
        normalized = post.normalize_score(torch.tensor([r["pred_score"] for r in self.predictions])).tolist()
        return [
            {**row, "normalized_score": n, "decision": "anomalous" if row["pred_score"] >= threshold else "normal"}
            for row, n in zip(self.predictions, normalized, strict=True)
        ]

    def decisions(self, post: torch.nn.Module) -> dict | None:
        """Counts at the image threshold, and the share of each defect type found; None without one."""
        if not post.calibrated or not self.predictions:
            return None
        threshold = float(post.image_threshold)
        counts = {"threshold": threshold, "tp": 0, "fp": 0, "tn": 0, "fn": 0}
        found: dict[str, list[int]] = {}
        for row in self.predictions:
            anomalous, flagged = row["gt_label"] == 1, row["pred_score"] >= threshold
            counts[("t" if anomalous == flagged else "f") + ("p" if flagged else "n")] += 1
            if anomalous:
                seen = found.setdefault(row["defect"] or "anomalous", [0, 0])
                seen[0], seen[1] = seen[0] + flagged, seen[1] + 1
        return {**counts, "found_per_defect": {d: {"found": k, "images": n} for d, (k, n) in sorted(found.items())}}

    def kind_aurocs(self) -> dict[str, float | None]:
        """Image AUROC on the normal images and each kind of anomaly the dataset names (MVTec LOCO
        AD's logical and structural anomalies, :data:`adkd.metrics.names.KIND_METRICS`); None where
        there are no normal images; where every kind is tested, their mean (``image_auroc_mean``, the
        official detection number). Nothing for datasets without such kinds."""
        from torchmetrics.functional.classification import binary_auroc

        out = {}
        normal = [r["pred_score"] for r in self.predictions if r["gt_label"] == 0]
        for kind, name in KIND_METRICS.items():
            anomalous = [r["pred_score"] for r in self.predictions if r["gt_label"] == 1 and r["defect"] == kind]
            if not anomalous:
                continue
            scores = torch.tensor(normal + anomalous, dtype=torch.float64)
            labels = torch.tensor([0] * len(normal) + [1] * len(anomalous))
            out[name] = float(binary_auroc(scores, labels, thresholds=None)) if normal else None
        if len(out) == len(KIND_METRICS):  # every kind tested: their mean, the dataset's official number
            values = list(out.values())
            out[KIND_MEAN] = None if any(v is None for v in values) else sum(values) / len(values)
        return out

    def kind_spros(self) -> dict[str, float | None]:
        """AU-sPRO to FPR 0.05 on the normal images and each kind of anomaly (MVTec LOCO AD's
        logical and structural anomalies; the false positives counted on those images alone, as the
        dataset's evaluation scores each kind), and the mean of the two kinds: the official
        localization number. None where a kind has no regions (and then no mean). Nothing for
        datasets without defect regions."""
        if not self.kind_spro:
            return {}
        out = {}
        for kind, name in KIND_SPRO_METRICS.items():
            spro = self.kind_spro.get(kind)
            defined = spro is not None and spro.regions and any(len(n) for n in spro.negatives)
            out[name] = spro.areas([SPRO_LIMITS["pixel_spro"]])[0] if defined else None
        values = list(out.values())
        out[SPRO_MEAN] = None if any(v is None for v in values) else sum(values) / len(values)
        return out

    def compute(self, post: torch.nn.Module, milliseconds: float, segmentation_threshold: float | None = None) -> dict:
        """The threshold-free metrics (the sample-level ones where every image names its part), those
        at ``post``'s image threshold where it has one, the
        segmentation F1 at ``segmentation_threshold`` where the dataset asks for one, the time."""
        metrics = self.metrics.compute()
        if post.calibrated and self.predictions:
            metrics.update(self.metrics.at_threshold(float(post.image_threshold)))
        if segmentation_threshold is not None:
            metrics["pixel_seg_f1"] = self.metrics.segmentation_f1(segmentation_threshold)
        metrics.update(self.kind_aurocs())
        metrics.update(self.kind_spros())
        if self.samples and len(self.samples) == len(self.predictions):  # every image's part is known
            scores, labels = [r["pred_score"] for r in self.predictions], [r["gt_label"] for r in self.predictions]
            metrics.update(sample_metrics(scores, labels, self.samples))
        metrics["inference_ms_per_image"] = milliseconds
        return metrics


class Evaluation(L.Callback):
    """Scores the test split from the model's (anomaly_map, pred_score) per batch.

    ``run``: what metrics.json says of the run beside its metrics (method, label, dataset,
    backbone, pretrained, image_size, max_epochs, steps, seed, overrides, tags, threshold_fpr), given by
    the config (conf/run.yaml). The validation metrics (:class:`adkd.training.callbacks.SyntheticValidation`)
    are read from ``trainer.callback_metrics`` when training ends.

    A unified run (``category=all``, :mod:`adkd.data.unified`) is scored per category, each at its
    own thresholds: metrics.json's ``per_category`` holds each category's metrics and thresholds,
    and its ``metrics`` the mean over categories (a metric undefined in any category has no mean);
    the loggers get ``test/<category>/<metric>`` and the mean as ``test/<metric>``; figures and
    plots go to ``figures/<category>/`` and ``plots/<category>/``, and ``test_predictions.csv``
    gains a ``category`` column.

    Where every test image names the part it shows (Real-IAD's multi-view protocol), the metrics
    also score each part by its highest-scoring view (``sample_auroc``, ``sample_ap``,
    ``sample_f1max``: :mod:`adkd.metrics.samples`), and ``test_predictions.csv`` gains a ``sample`` column."""

    def __init__(self, output_dir: str, num_figures: int = 8, run: dict | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.num_figures = num_figures
        self.run = dict(run or {})
        self.validation: dict | None = None
        self.segmentation_threshold: float | None = None  # from the validation images, where the dataset asks
        self.category_segmentation_thresholds: dict[str, float] = {}  # a unified run's, per category

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        found = {
            k[4:]: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("val/") and k[4:].removeprefix("labelled_") in METRIC_NAMES
        }
        self.validation = found or None
        threshold = trainer.callback_metrics.get("val/segmentation_threshold")  # adkd.training.callbacks.Calibrate
        self.segmentation_threshold = None if threshold is None else float(threshold)
        ending = "/segmentation_threshold"  # a unified run's: val/<category>/segmentation_threshold
        self.category_segmentation_thresholds = {
            key[len("val/") : -len(ending)]: float(value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith("val/") and key.endswith(ending) and key.count("/") == 2
        }

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        self.pixel = bool(datamodule.has_masks) if datamodule is not None else True
        # A unified run's categories, each scored apart (with its own masks or none); else one tally.
        self.members = dict(getattr(datamodule, "members", None) or {})
        self.tallies: dict[str | None, _Tally] = {}
        for category in self.members or [None]:  # in the categories' order, each reported even if never seen
            self._tally(category)
        self.seconds, self.images = 0.0, 0

    def _tally(self, category: str | None) -> _Tally:
        if category not in self.tallies:
            pixel = bool(self.members[category].has_masks) if category is not None else self.pixel
            self.tallies[category] = _Tally(pixel, self.num_figures)
        return self.tallies[category]

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
        if not self.members:
            self._tally(None).add(batch, anomaly_map, pred_score)
            return
        categories = batch["category"]
        for category in dict.fromkeys(categories):
            if category not in self.members:
                raise ValueError(f"test image of category {category!r}, not one of the run's {list(self.members)}")
            chosen = [i for i, c in enumerate(categories) if c == category]
            part = batch if len(chosen) == len(categories) else _subset(batch, chosen)
            self._tally(category).add(part, anomaly_map[chosen], pred_score[chosen])

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        milliseconds = 1000 * self.seconds / max(self.images, 1)
        post = pl_module.post
        if not self.members:
            metrics = self.tallies[None].compute(post, milliseconds, self.segmentation_threshold)
            self._log(pl_module, metrics)
            results = self._describe(trainer, pl_module, metrics)
            self._write(trainer, {**results, "decisions": self.tallies[None].decisions(post)})
            return
        per_category = {}
        for category in self.members:
            chosen, segmentation = self._post(post, category), self.category_segmentation_thresholds.get(category)
            metrics = self._tally(category).compute(chosen, milliseconds, segmentation)
            self._log(pl_module, metrics, f"{category}/")
            per_category[category] = {
                "pixel_metrics": self._tally(category).pixel,
                "metrics": metrics,
                "decisions": self._tally(category).decisions(chosen),
                "thresholds": {
                    "image": _number(chosen.image_threshold),
                    "pixel": _number(chosen.pixel_threshold),
                    "segmentation": segmentation,
                },
            }
        mean = mean_over_categories([c["metrics"] for c in per_category.values()])
        self._log(pl_module, mean)
        results = self._describe(trainer, pl_module, mean)
        self._write(trainer, {**results, "protocol": "unified", "per_category": per_category})

    @staticmethod
    def _post(post: torch.nn.Module, category: str) -> torch.nn.Module:
        """``post`` deciding with ``category``'s thresholds (a unified model's), or without any."""
        return post.for_category(category) if category in post.category_thresholds else post

    @staticmethod
    def _log(pl_module: L.LightningModule, metrics: dict, prefix: str = "") -> None:
        for name, value in metrics.items():
            if value is not None:
                pl_module.log(f"test/{prefix}{name}", value)

    def _describe(self, trainer: L.Trainer, pl_module: L.LightningModule, metrics: dict) -> dict:
        run, post = self.run, pl_module.post
        method = run.get("method") or type(pl_module).__name__.lower()
        return {
            "method": method,
            "label": run.get("label") or method,
            "dataset": run.get("dataset"),
            "category": getattr(trainer.datamodule, "category", None),
            "split": getattr(trainer.datamodule, "evaluate", "test"),  # what "metrics" scored (evaluate=)
            **{key: run.get(key) for key in ("backbone", "pretrained", "image_size", "max_epochs", "steps", "seed")},
            "training": next((c.summary for c in trainer.callbacks if isinstance(c, TrainingLength)), None),
            "overrides": list(run.get("overrides") or []),
            "tags": list(run.get("tags") or []),
            "pixel_metrics": self.pixel,
            "thresholds": {
                "fpr": run.get("threshold_fpr"),
                "image": _number(post.image_threshold),
                "pixel": _number(post.pixel_threshold),
                "segmentation": self.segmentation_threshold,  # pixel_seg_f1's (adkd.metrics.segmentation)
            },
            "metrics": metrics,
            "validation": self.validation,
            **({"tested": run["tested"]} if run.get("tested") else {}),
        }

    def _write(self, trainer: L.Trainer, results: dict) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "metrics.json").write_text(json.dumps(results, indent=2))
        unified = bool(self.members)
        post = trainer.lightning_module.post
        fields = ["image_path", "gt_label", "defect", "pred_score", "normalized_score", "decision"]
        parts = any(tally.samples for tally in self.tallies.values())  # the part each image shows (Real-IAD)
        with (self.output_dir / "test_predictions.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[*fields, *(["category"] * unified), *(["sample"] * parts)])
            writer.writeheader()
            for category, tally in self.tallies.items():
                rows = tally.decided(self._post(post, category) if unified else post)
                rows = [{**row, "category": category} for row in rows] if unified else rows
                if parts:
                    samples = tally.samples if len(tally.samples) == len(rows) else [""] * len(rows)
                    rows = [{**row, "sample": sample} for row, sample in zip(rows, samples, strict=True)]
                writer.writerows(rows)
        from lightning.pytorch.loggers import WandbLogger

        for category, tally in self.tallies.items():
            chosen, sub = (self._post(post, category), f"/{category}") if unified else (post, "")
            figures = _save_figures(tally, chosen, self.output_dir / f"figures{sub}")
            metrics = results["per_category"][category]["metrics"] if unified else results["metrics"]
            plots = write_plots(
                self.output_dir / f"plots{sub}",
                tally.predictions,
                chosen,
                tally.worst,
                tally.metrics.pixel_pr_curve(),
                metrics.get("pixel_ap"),
            )
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    if figures:
                        logger.log_image(key=f"test{sub}/figures", images=[str(p) for p in figures])
                    for key, paths in _plot_keys(plots, sub).items():
                        logger.log_image(key=key, images=[str(p) for p in paths])
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                summary = {f"test/{k}": v for k, v in results["metrics"].items() if v is not None}
                for category, section in (results.get("per_category") or {}).items():
                    summary.update({f"test/{category}/{k}": v for k, v in section["metrics"].items() if v is not None})
                logger.experiment.summary.update(summary)
        print(summary_text(results, self.output_dir), flush=True)


def _save_figures(tally: _Tally, post: torch.nn.Module, folder: Path) -> list[Path]:
    """One overlay per kept sample (adkd.report.panels, as predict draws them), with the
    ground truth outlined."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, s in enumerate(tally.figures):
        kind = "anomalous" if s["gt_label"] else "normal"
        path = Path(s["image_path"])
        paths.append(folder / f"{i:02d}_{kind}.png")
        draw_sample(post, s, f"{kind}: {path.parent.name}/{path.name}, score {s['pred_score']:.4g}", paths[-1])
    return paths


def mean_over_categories(per_category: list[dict]) -> dict:
    """Each metric's mean over the categories; None where any category's is undefined (as the
    report's means: an undefined value never enters a mean, and a mean over fewer categories would
    not be the dataset's)."""
    names = list(dict.fromkeys(name for metrics in per_category for name in metrics))
    mean = {}
    for name in names:
        values = [metrics.get(name) for metrics in per_category]
        mean[name] = None if any(v is None for v in values) else sum(values) / len(values)
    return mean


def _subset(batch: dict, chosen: list[int]) -> dict:
    """The samples ``chosen`` (indices) of a batch: tensors indexed, lists picked."""
    index = torch.tensor(chosen)
    return {
        key: value[index.to(value.device)] if isinstance(value, torch.Tensor) else [value[i] for i in chosen]
        for key, value in batch.items()
    }


def _sample(batch: dict, anomaly_map: torch.Tensor, pred_score: torch.Tensor, i: int) -> dict:
    """The ``i``-th image of a batch with its map and mask, on the CPU, for drawing after the test."""
    return {
        "image": batch["image"][i].cpu(),
        "anomaly_map": anomaly_map[i, 0].cpu(),
        "gt_mask": batch["gt_mask"][i, 0].cpu(),
        "gt_label": int(batch["gt_label"][i]),
        "pred_score": float(pred_score[i]),
        "image_path": batch["image_path"][i],
    }


def _plot_keys(plots: list[Path], sub: str = "") -> dict[str, list[Path]]:
    """W&B keys: one per curve (``test/plots/image_roc``), one per kind of worst image (``test/worst_fp``);
    ``sub``: a unified run's ``/<category>`` after ``test``."""
    keys: dict[str, list[Path]] = {}
    for path in plots:
        stem = path.stem
        key = f"test{sub}/{stem.rsplit('_', 1)[0]}" if stem.startswith("worst_") else f"test{sub}/plots/{stem}"
        keys.setdefault(key, []).append(path)
    return keys


def summary_text(results: dict, output_dir: Path) -> str:
    """What the terminal shows at the end: the metrics, the decisions at the threshold with the
    defects found, and the commands that use the model."""
    m = results["metrics"]
    width = max(len(k) for k in m)
    lines = [f"\n{results['method']} on {results['dataset']}/{results['category']} ({results['backbone']})"]
    per_category = results.get("per_category")
    if per_category:
        lines[0] += f": one model for {len(per_category)} categories (unified); the mean over them"
    lines += [f"  {k:<{width}}  {'n/a' if v is None else f'{v:.4f}'}" for k, v in m.items()]
    for category, section in (per_category or {}).items():
        shown = [(k, section["metrics"].get(k)) for k in SUMMARY_PER_CATEGORY if k in section["metrics"]]
        lines.append(f"  {category}: " + ", ".join(f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in shown))
    if not results["pixel_metrics"]:
        lines.append("  (no pixel masks in this dataset: image-level metrics only)")
    if any(v is None for v in m.values()):
        lines.append("  (n/a: undefined on this test split; see the warning above)")
    sections = per_category or {None: results}
    for category, section in sections.items():
        lines += decision_lines(section.get("decisions"), category)
    lines.append(f"Outputs: {output_dir}")
    model = Path(results["tested"]).parent.parent if results.get("tested") else output_dir
    category = f" --category {next(iter(per_category))}" if per_category else ""
    lines.append(f"Next: adkd serve {model}{category}    (inspect the test images, choose the threshold)")
    lines.append(f"      adkd predict {model} <images or folder>{category}")
    return "\n".join(lines)


def decision_lines(decisions: dict | None, category: str | None = None) -> list[str]:
    where = f"{category}: " if category else ""
    if decisions is None:
        return [f"{where}no image threshold (no normal validation images): scores only, no decisions"]
    d = decisions
    lines = [
        f"{where}at the image threshold {d['threshold']:.4g}: {d['tp']} TP, {d['fp']} FP, {d['tn']} TN, {d['fn']} FN"
    ]
    found = d.get("found_per_defect") or {}
    if found:
        lines.append("  found per defect: " + ", ".join(f"{k} {v['found']}/{v['images']}" for k, v in found.items()))
    return lines


def _sync(tensor: torch.Tensor) -> None:
    if tensor.is_cuda:
        torch.cuda.synchronize()


def _number(value: torch.Tensor) -> float | None:
    value = float(value)
    return None if value != value else value  # NaN (never calibrated) -> null
