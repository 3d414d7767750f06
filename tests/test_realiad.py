"""Real-IAD (adkd.data.realiad) on a replica of its release (tests/replicas.py): the reader against
anomalib 2.7's ``RealIADDataset`` file by file and mask by mask, under both of the authors'
protocols; the errors; and the sample-level score of a part seen from several views on a case
worked out by hand.

Departures from anomalib, on purpose:

- anomalib joins ``image_path`` to ``realiad_<resolution>/<category>``; adkd to
  ``realiad_<resolution>/<meta.prefix>``, as the authors' loader does (the release's prefix is the
  category with a slash, so the files are the same).
- anomalib trains on every entry of the JSON's ``train`` list; adkd on its normal ones (the release's
  training lists hold no other), and holds out ``val_fraction`` of them for validation.
- an anomalous entry without a mask is refused (anomalib gives it an empty mask; the authors' loader
  counts it as normal); the release has none.
- adkd also reads the JSONs where the authors' repository puts them (``<root>/realiad_jsons_sv/``
  beside ``<root>/realiad_jsons/``), as well as inside the archive's folder (anomalib's default).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from adkd.data.records import Record
from tests import replicas


def rows(records: list[Record]) -> list[tuple]:
    return sorted((str(r.image_path), r.gt_label, str(r.mask_path) if r.gt_label else None) for r in records)


def anomalib_rows(samples) -> list[tuple]:  # noqa: ANN001
    return sorted(
        (str(Path(row.image_path)), int(row.label_index), str(Path(row.mask_path)) if row.label_index else None)
        for row in samples.itertuples()
    )


@pytest.mark.parametrize(
    ("protocol", "folder", "n_train", "n_test"),
    [("multi_view", "realiad_jsons", 30, 15), ("single_view", "realiad_jsons_sv", 6, 3)],
)
def test_realiad_reads_as_anomalib_file_by_file_and_mask_by_mask(tmp_path, protocol, folder, n_train, n_test):
    from anomalib.data.datasets.image.realiad import RealIADDataset

    from adkd.data.dataset import AnomalyDataset
    from adkd.data.realiad import RealIADDataModule

    root = replicas.realiad(tmp_path / "realiad")
    for category in ("audiojack", "pcb"):
        dm = RealIADDataModule(root=str(root), category=category, protocol=protocol)

        def anomalib_split(split: str, category: str = category) -> RealIADDataset:
            json_path = f"realiad_jsons/{folder}/{category}.json"
            return RealIADDataset(root=root, category=category, resolution=1024, split=split, json_path=json_path)

        assert rows(dm.records("train")) == anomalib_rows(anomalib_split("train").samples)
        theirs_test = anomalib_split("test")
        test = dm.records("test")
        assert rows(test) == anomalib_rows(theirs_test.samples)
        assert (len(dm.records("train")), len(test)) == (n_train, n_test)
        assert sum(r.gt_label for r in test) == (3 if protocol == "multi_view" else 1)
        assert {r.defect for r in test} == ({"good", "AK", "QS"} if protocol == "multi_view" else {"good", "AK"})

        their_masks = {
            str(Path(theirs_test[i].image_path)): theirs_test[i].gt_mask.numpy() for i in range(len(theirs_test))
        }
        ours_test = AnomalyDataset(test, image_size=16)  # the replica's size: no resizing
        for i, record in enumerate(test):
            mask = ours_test[i]["gt_mask"][0].numpy() > 0.5
            assert np.array_equal(mask, their_masks[str(record.image_path)].astype(bool))
            assert mask.any() == bool(record.gt_label)
            assert ("sample" in ours_test[i]) == (protocol == "multi_view")

        records = dm.checked_records()  # validation: held out of the normal training images
        assert sorted(records["train"] + records["val"], key=str) == sorted(dm.records("train"), key=str)
        assert not set(map(str, records["train"])) & set(map(str, records["val"]))
        if protocol == "multi_view":  # 10% of the 6 parts: one, with its 5 views, none of them trained on
            assert len(records["val"]) == 5 and len({r.sample for r in records["val"]}) == 1
            assert not {r.sample for r in records["val"]} & {r.sample for r in records["train"]}
        else:  # 10% of the 6 images
            assert len(records["val"]) == 1


def test_a_multi_view_record_names_its_part_by_the_authors_key_and_views_of_a_defective_part_may_be_normal(tmp_path):
    from adkd.data.realiad import RealIADDataModule, sample_of, view_of

    root = replicas.realiad(tmp_path / "realiad", ("toy",))
    test = RealIADDataModule(root=str(root), category="toy").records("test")
    by_sample: dict[str, list[int]] = {}
    for record in test:
        by_sample.setdefault(record.sample, []).append(record.gt_label)
    assert by_sample == {"toy_0005_OK": [0] * 5, "toy_0003_NG": [1, 0, 1, 0, 0], "toy_0004_NG": [0, 1, 0, 0, 0]}
    assert sample_of("NG/AK/S0003/rolled_strip_base_0003_NG_C3_20231023092610.jpg") == "rolled_strip_base_0003_NG"
    assert view_of("rolled_strip_base_0003_NG_C3_20231023092610.jpg") == 3
    assert sample_of("toy_3_NG_C3_x.jpg") is None


def test_the_json_folders_of_the_authors_repository_read_the_same(tmp_path):
    from adkd.data.realiad import RealIADDataModule

    root = replicas.realiad(tmp_path / "realiad", ("pcb",))
    nested = {
        p: RealIADDataModule(root=str(root), category="pcb", protocol=p).records("test")
        for p in ("multi_view", "single_view")
    }
    sv = root / "realiad_jsons" / "realiad_jsons_sv"
    shutil.move(sv, root / "realiad_jsons_sv")
    for json_file in (root / "realiad_jsons" / "realiad_jsons").iterdir():
        shutil.move(json_file, root / "realiad_jsons" / json_file.name)
    (root / "realiad_jsons" / "realiad_jsons").rmdir()
    for protocol, records in nested.items():
        dm = RealIADDataModule(root=str(root), category="pcb", protocol=protocol)
        assert dm.split_file.parent.name == ("realiad_jsons" if protocol == "multi_view" else "realiad_jsons_sv")
        assert dm.records("test") == records


def test_missing_data_wrong_category_protocol_or_download_say_what_to_do(tmp_path):
    from adkd.data.realiad import RealIADDataModule
    from adkd.errors import ConfigError, DataCheckError, DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError) as err:
        RealIADDataModule(root=str(tmp_path / "nowhere"), category="pcb")
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "realiad_jsons" / "pcb.json") in message
    assert "Expected layout" in message and "huggingface.co/datasets/REAL-IAD/Real-IAD" in message
    with pytest.raises(ConfigError, match="Unknown category 'nope' for dataset realiad. Valid categories: audiojack, "):
        RealIADDataModule(root=str(tmp_path), category="nope")
    with pytest.raises(ConfigError, match="dataset.protocol must be one of multi_view, single_view, got 'fuiad'"):
        RealIADDataModule(root=str(tmp_path), protocol="fuiad")
    with pytest.raises(ConfigError, match="cannot be downloaded by adkd without its authors' approval"):
        RealIADDataModule(root=str(tmp_path), download=True)

    root = replicas.realiad(tmp_path / "realiad", ("pcb",))
    with pytest.raises(DatasetNotFoundError, match=r"no .*realiad_512/pcb"):
        RealIADDataModule(root=str(root), category="pcb", resolution=512)
    split = root / "realiad_jsons" / "realiad_jsons" / "pcb.json"
    content = json.loads(split.read_text())
    anomalous = next(e for e in content["test"] if e["anomaly_class"] != "OK")
    anomalous["mask_path"] = None
    content["test"][0]["image_path"] = "../../elsewhere.jpg"
    split.write_text(json.dumps(content))
    dm = RealIADDataModule(root=str(root), category="pcb")
    with pytest.raises(DataCheckError, match="leaves the dataset root"):
        dm.records("test")
    content["test"][0]["image_path"] = "OK/S0005/pcb_5_OK.jpg"  # not the release's naming: no part
    split.write_text(json.dumps(content))
    with pytest.raises(DataCheckError) as err:
        dm.records("test")
    assert "has no mask_path" in str(err.value) and "its sample is unknown" in str(err.value)


def test_the_dataset_config_reads_its_replica_and_category_all_joins_the_30_categories(tmp_path):
    from hydra.utils import instantiate

    from adkd.data.realiad import RealIADDataModule
    from adkd.data.unified import datamodule
    from adkd.training.config import compose

    root = replicas.realiad(tmp_path / "data", RealIADDataModule.categories)
    cfg = compose(
        ["dataset=realiad", f"dataset.root={root}", "category=pcb", "dataset.protocol=single_view"], tmp_path / "run"
    )
    dm = instantiate(cfg.dataset)
    assert (dm.name, dm.category, dm.protocol, dm.resolution) == ("realiad", "pcb", "single_view", "1024")
    assert {r.gt_label for r in dm.checked_records()["test"]} == {0, 1}

    cfg = compose(["dataset=realiad", f"dataset.root={root}", "category=all"], tmp_path / "run_all")
    unified = datamodule(cfg.dataset)
    assert unified.categories == RealIADDataModule.categories and unified.category == "all"
    splits = unified.split_records()
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (30 * 25, 30 * 5, 30 * 15)
    assert {r.category for r in splits["test"]} == set(RealIADDataModule.categories)
    assert len({r.sample for r in splits["test"]}) == 30 * 3  # a part's name holds its category: none shared


def test_a_part_is_scored_by_its_highest_view_and_is_anomalous_if_any_view_is():
    """Four parts: A normal (views 0.1, 0.4, 0.2), B defective in its first view (0.3; its normal
    views 0.9 and 0.2), C defective in its first (0.35; 0.1), D normal (0.5, 0.05). Parts: A 0.4,
    B 0.9 (the view that scores highest is a normal one: a part is scored by its views, whatever
    each shows), C 0.35, D 0.5. AUROC: B beats A and D, C neither: 2/4. By score B, D, A, C: AP =
    1/2 x 1 + 1/2 x 2/4 = 0.75; F1-max 2/3 (at B: P 1, R 1/2; at C: P 1/2, R 1). Image by image the
    two defective views beat 5 of the 8 normal ones each: AUROC 10/16."""
    from torchmetrics.functional.classification import binary_auroc

    from adkd.metrics.samples import per_sample, sample_metrics

    scores = [0.1, 0.4, 0.2, 0.3, 0.9, 0.2, 0.35, 0.1, 0.5, 0.05]
    labels = [0, 0, 0, 1, 0, 0, 1, 0, 0, 0]
    samples = ["A"] * 3 + ["B"] * 3 + ["C"] * 2 + ["D"] * 2
    assert per_sample(scores, labels, samples) == ([0.4, 0.9, 0.35, 0.5], [0, 1, 1, 0])
    assert sample_metrics(scores, labels, samples) == pytest.approx(
        {"sample_auroc": 0.5, "sample_ap": 0.75, "sample_f1max": 2 / 3}, abs=1e-6
    )
    assert float(binary_auroc(torch.tensor(scores), torch.tensor(labels), thresholds=None)) == pytest.approx(10 / 16)
    assert sample_metrics([0.2, 0.1], [0, 0], ["A", "B"]) == {
        "sample_auroc": None,
        "sample_ap": None,
        "sample_f1max": None,
    }


def test_the_test_tally_adds_sample_metrics_only_where_every_image_names_its_part():
    from adkd.training.evaluation import _Tally

    def batch(labels: list[int], samples: list[str] | None) -> dict:
        out = {
            "gt_label": torch.tensor(labels),
            "gt_mask": torch.zeros(len(labels), 1, 2, 2),
            "image_path": [f"{i}.jpg" for i in range(len(labels))],
        }
        return {**out, "sample": samples} if samples else out

    post = SimpleNamespace(calibrated=False)
    scores = torch.tensor([0.1, 0.4, 0.2, 0.3, 0.9, 0.2, 0.35, 0.1, 0.5, 0.05])
    labels = [0, 0, 0, 1, 0, 0, 1, 0, 0, 0]
    multi_view, single = _Tally(pixel=False, num_figures=0), _Tally(pixel=False, num_figures=0)
    parts = ["A"] * 3 + ["B"] * 3 + ["C"] * 2 + ["D"] * 2
    for start in (0, 5):  # two batches
        multi_view.add(batch(labels[start : start + 5], parts[start : start + 5]), None, scores[start : start + 5])
        single.add(batch(labels[start : start + 5], None), None, scores[start : start + 5])
    metrics = multi_view.compute(post, 1.0)
    assert metrics["sample_auroc"] == pytest.approx(0.5) and metrics["image_auroc"] == pytest.approx(10 / 16)
    assert "sample_auroc" not in single.compute(post, 1.0)


# The SLURM sweep of the 30 categories (README, "Real-IAD"), rehearsed at toy size: the same Hydra
# multirun with Hydra's basic launcher in place of hydra/launcher=slurm, stopped in its first job and
# continued with the command it prints, then tabulated.
@pytest.mark.slow
def test_a_category_sweep_is_stopped_resumed_in_its_folder_and_tabulated(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    root_dir = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root_dir), "ADKD_OFFLINE": "1"}

    def start(args: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "adkd.run", *args],
            cwd=tmp_path,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    data = replicas.realiad(tmp_path / "realiad")
    args = [
        "-m",
        "method=stfpm",
        "dataset=realiad",
        f"dataset.root={data}",
        "category=audiojack,pcb",
        "backbone=resnet18",
        "backbone.pretrained=false",
        "image_size=32",
        "batch_size=4",
        "max_epochs=4",
        "logger=none",
        "num_figures=0",
        "dataset.num_workers=0",
    ]
    proc = start(args)
    deadline = time.time() + 180
    while time.time() < deadline and not list((tmp_path / "outputs").rglob("0/checkpoints/last.ckpt")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    command = out.split("Resume with: ")[1].splitlines()[0].split()
    assert command[-1] == "resume=true" and "category=audiojack,pcb" in command
    resumed = start(command[3:])
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-3000:]
    assert f"Resuming {sweep.resolve() / '0'} from" in (sweep / "0" / "run.log").read_text()
    for job, category in (("0", "audiojack"), ("1", "pcb")):
        assert json.loads((sweep / job / "status.json").read_text())["status"] == "finished"
        results = json.loads((sweep / job / "metrics.json").read_text())
        assert (results["dataset"], results["category"]) == ("realiad", category)
        metrics = results["metrics"]
        for name in ("image_auroc", "sample_auroc", "sample_ap", "pixel_auroc", "pixel_aupro"):
            assert 0.0 <= metrics[name] <= 1.0, (name, metrics[name])
        assert results["training"]["epochs"] == 4
        with (sweep / job / "test_predictions.csv").open() as f:
            predictions = list(csv.DictReader(f))
        assert len(predictions) == 15 and {p["sample"] for p in predictions} == {
            f"{category}_0005_OK",
            f"{category}_0003_NG",
            f"{category}_0004_NG",
        }
        print(category, {k: round(metrics[k], 4) for k in ("image_auroc", "sample_auroc", "pixel_auroc")})
    report = subprocess.run(
        [sys.executable, "-m", "adkd", "report", str(sweep)], cwd=tmp_path, env=env, text=True, capture_output=True
    )
    assert report.returncode == 0, report.stderr[-3000:]
    print(report.stdout)
    assert "audiojack" in report.stdout and "pcb" in report.stdout and "sample" in report.stdout.lower()


def test_what_a_category_costs_is_counted_from_the_copy(tmp_path):
    import os
    import subprocess
    import sys

    from adkd.data.realiad import category_cost

    root = replicas.realiad(tmp_path / "realiad")
    files = [p for p in (root / "realiad_1024" / "pcb").rglob("*") if p.is_file()]
    cost = category_cost(root, "pcb")
    assert cost == {
        "train_images": 30,
        "test_images": 15,
        "test_anomalous": 3,
        "test_samples": 3,
        "bytes": sum(p.stat().st_size for p in files),  # every image and mask of the category is read
    }
    assert category_cost(root, "pcb", "single_view")["test_samples"] == 3
    repository = Path(__file__).resolve().parents[1]
    script = [sys.executable, str(repository / "experiments" / "realiad_cost.py"), "--root", str(root)]
    env = {**os.environ, "PYTHONPATH": str(repository)}
    done = subprocess.run(
        [*script, "--rate", "5", "--categories", "audiojack,pcb"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "| pcb | 30 | 15 | 3 | 3 | 0.00 | 6.0 |" in text and "| all 2 | 60 | 30 | 6 | 6 | 0.00 | 12.0 |" in text
