"""The unified protocol (category=all): one model on every category's normal images, thresholds
and test metrics per category, and what predict, export, serve and the report make of it."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adkd.data.folder import FolderDataModule
from adkd.errors import CheckpointError, ConfigError, DataCheckError
from adkd.methods.registry import method_names
from adkd.training.config import compose
from tests.conftest import _texture, fixture_seed, fixture_steps, smallest_image, tiny_overrides

SIZE = 32


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path)


def _category(folder: Path, seed: int, noise: float, labelled_val: bool) -> None:
    """12 normal training images, 4 normal and 4 with a bright square (masked) in the test split,
    and with ``labelled_val`` a labelled ``val/`` (3 normal, 1 with a square)."""
    rng = np.random.default_rng(seed)

    def normal() -> np.ndarray:
        return _texture(rng, SIZE) + rng.normal(0, noise, (SIZE, SIZE))

    def square(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mask = np.zeros((SIZE, SIZE))
        y, x = rng.integers(2, SIZE - 12, 2)
        image[y : y + 8, x : x + 8], mask[y : y + 8, x : x + 8] = 255, 255
        return image, mask

    for i in range(12):
        _save(normal(), folder / "train" / "good" / f"{i:03d}.png")
    for i in range(4):
        _save(normal(), folder / "test" / "good" / f"{i:03d}.png")
        image, mask = square(normal())
        _save(image, folder / "test" / "spot" / f"{i:03d}.png")
        _save(mask, folder / "ground_truth" / "spot" / f"{i:03d}_mask.png")
    if labelled_val:
        for i in range(3):
            _save(normal(), folder / "val" / "good" / f"{i:03d}.png")
        _save(square(normal())[0], folder / "val" / "spot" / "000.png")


@pytest.fixture(scope="module")
def two_categories(tmp_path_factory) -> Path:
    """A folder of two categories in the MVTec AD layout: ``widget`` (validation held out of its
    training images) and ``gadget`` (much noisier images, and a labelled ``val/`` of its own)."""
    root = tmp_path_factory.mktemp("two_categories")
    _category(root / "widget", seed=0, noise=0, labelled_val=False)
    _category(root / "gadget", seed=1, noise=40, labelled_val=True)
    return root


def _overrides(root: Path, *extra: str) -> list[str]:
    return [o for o in tiny_overrides(root, "method=rd4ad", *extra) if o != "category=widget"] + ["category=all"]


@pytest.fixture(scope="module")
def unified_run(two_categories, tmp_path_factory) -> Path:
    from adkd.training.run import run

    folder = tmp_path_factory.mktemp("unified")
    # Batches of 3: the test's batches hold images of both categories (images 6 to 8), as real ones do.
    run(compose([o.replace("batch_size=4", "batch_size=3") for o in _overrides(two_categories)], folder))
    return folder


def _category_datamodule(root: Path, category: str) -> FolderDataModule:
    return FolderDataModule(root=str(root), category=category, image_size=SIZE, batch_size=4)


def _scored(model, datamodule_records) -> tuple[torch.Tensor, torch.Tensor, list]:  # noqa: ANN001
    """Maps, scores and samples of ``records`` under ``model``, as the test scores them."""
    from adkd.data.dataset import AnomalyDataset

    samples = [s for s in AnomalyDataset(datamodule_records, SIZE)]
    with torch.no_grad():
        maps, scores = model.predict_maps(torch.stack([s["image"] for s in samples]))
    return maps, scores, samples


def test_one_model_trains_once_on_every_categorys_normal_images(two_categories, unified_run):
    from adkd.data.unified import datamodule

    cfg = compose(_overrides(two_categories), unified_run)
    joined = datamodule(cfg.dataset)
    joined.setup("fit")
    separate = {c: _category_datamodule(two_categories, c).checked_records() for c in ("gadget", "widget")}
    assert joined.categories == ("gadget", "widget")
    # gadget trains on all 12 (its val/ validates); widget holds 1 of its 12 out for validation
    assert len(joined.train_set) == sum(len(r["train"]) for r in separate.values()) == 12 + 11
    assert {r.category for r in joined.train_set.records} == {"gadget", "widget"}
    assert [r.image_path for r in joined.checked_records()["calibration"]] == [
        r.image_path for c in ("gadget", "widget") for r in separate[c]["calibration"]
    ]  # each category's own validation images: gadget's val/ (with its anomaly), widget's hold-out
    checkpoint = torch.load(unified_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == math.ceil(23 / 3)  # one epoch over the union, in one model


def test_per_category_metrics_are_each_categorys_own_test_with_the_same_model(two_categories, unified_run):
    from adkd.deploy.checkpoints import load_model
    from adkd.metrics import AnomalyMetrics

    results = json.loads((unified_run / "metrics.json").read_text())
    assert (results["category"], results["protocol"]) == ("all", "unified")
    assert list(results["per_category"]) == ["gadget", "widget"]
    for category, section in results["per_category"].items():
        model, _ = load_model(unified_run, category=category)
        maps, scores, samples = _scored(model, _category_datamodule(two_categories, category).checked_records()["test"])
        metrics = AnomalyMetrics(pixel=True)
        labels = torch.tensor([s["gt_label"] for s in samples])
        metrics.update(scores, labels, maps, torch.stack([s["gt_mask"] for s in samples]))
        expected = {**metrics.compute(), **metrics.at_threshold(section["thresholds"]["image"])}
        for name, value in expected.items():
            assert section["metrics"][name] == pytest.approx(value, abs=1e-5), (category, name)
    for name in ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1"):  # the top-level metrics: the mean
        values = [s["metrics"][name] for s in results["per_category"].values()]
        assert results["metrics"][name] == pytest.approx(sum(values) / 2)
    rows = (unified_run / "test_predictions.csv").read_text().splitlines()
    assert rows[0] == "image_path,gt_label,defect,pred_score,normalized_score,decision,category" and len(rows) == 1 + 16
    assert {p.name for p in (unified_run / "plots").iterdir()} == {"gadget", "widget"}
    assert results["validation"]["labelled_image_auroc"] is not None  # gadget's val/, scored after training
    assert results["validation"]["pixel_ap"] is not None  # the union's validation images with synthetic anomalies


def test_each_category_gets_thresholds_from_its_own_validation_images(two_categories, unified_run):
    from adkd.deploy.checkpoints import load_model
    from adkd.methods.components.postprocess import _upper_quantile

    results = json.loads((unified_run / "metrics.json").read_text())
    thresholds = {c: s["thresholds"] for c, s in results["per_category"].items()}
    assert results["thresholds"]["image"] is None  # the model has none of its own
    for category in ("gadget", "widget"):
        model, _ = load_model(unified_run, category=category)
        calibration = [
            r
            for r in _category_datamodule(two_categories, category).checked_records()["calibration"]
            if r.gt_label == 0
        ]
        maps, scores, _ = _scored(model, calibration)
        assert len(calibration) == {"gadget": 3, "widget": 1}[category]
        assert thresholds[category]["image"] == pytest.approx(_upper_quantile(scores, 0.01), rel=1e-5)
        assert thresholds[category]["pixel"] == pytest.approx(_upper_quantile(maps.flatten(), 0.01), rel=1e-5)
        assert float(model.post.image_threshold) == pytest.approx(thresholds[category]["image"])
    assert thresholds["gadget"]["image"] > 1.01 * thresholds["widget"]["image"]  # its noisier images score higher


def test_predict_export_and_serve_pick_a_categorys_thresholds_or_ask_for_one(
    unified_run, two_categories, tmp_path, capsys
):
    import csv

    from adkd.cli import main as adkd
    from adkd.deploy.checkpoints import load_model
    from adkd.deploy.serve.session import Session

    per_category = json.loads((unified_run / "metrics.json").read_text())["per_category"]
    thresholds = {category: section["thresholds"]["image"] for category, section in per_category.items()}
    images = str(two_categories / "gadget" / "test")
    assert adkd(["predict", str(unified_run), images, "--out", str(tmp_path / "p"), "--no-figures"]) == 1
    assert "one model for the categories gadget, widget" in capsys.readouterr().err
    assert adkd(["export", str(unified_run)]) == 1 and "--category" in capsys.readouterr().err
    assert (
        adkd(
            ["predict", str(unified_run), images, "--out", str(tmp_path / "p"), "--no-figures", "--category", "gadget"]
        )
        == 0
    )
    rows = list(csv.DictReader((tmp_path / "p" / "predictions.csv").open()))
    assert [float(r["image_threshold"]) for r in rows] == pytest.approx([thresholds["gadget"]] * 8)
    with pytest.raises(CheckpointError, match="no category 'bolt': it holds thresholds for gadget, widget"):
        load_model(unified_run, category="bolt")
    run_copy = Path(shutil.copytree(unified_run, tmp_path / "run"))
    session = Session(run_copy, category="widget")
    assert session.threshold == pytest.approx(thresholds["widget"])
    assert {s.path.parent.parent.parent.name for s in session.images["test"]} == {"widget"}  # its images only
    saved = session.choose(123.0)
    assert saved.name == "last.widget.threshold.json"
    assert float(load_model(run_copy, category="widget")[0].post.image_threshold) == 123.0
    assert float(load_model(run_copy, category="gadget")[0].post.image_threshold) == pytest.approx(thresholds["gadget"])


def test_a_model_of_one_category_refuses_a_category(trained_run):
    from adkd.deploy.checkpoints import load_model

    with pytest.raises(CheckpointError, match="a model of category 'widget' alone"):
        load_model(trained_run, category="widget")


def test_the_report_puts_a_unified_run_beside_per_category_runs(unified_run, tmp_path):
    from adkd.report.tables import UNDERTRAINED, write_report

    unified = json.loads((unified_run / "metrics.json").read_text())
    (tmp_path / "0").mkdir()
    shutil.copy(unified_run / "metrics.json", tmp_path / "0" / "metrics.json")
    for job, category, auroc in ((1, "gadget", 0.25), (2, "widget", 0.75)):  # per-category runs of the method
        (tmp_path / str(job)).mkdir()
        separate = {**unified, "category": category, "metrics": {"image_auroc": auroc}, "overrides": []}
        for key in ("protocol", "per_category", "training"):
            separate.pop(key)
        (tmp_path / str(job) / "metrics.json").write_text(json.dumps(separate))
    md = write_report(tmp_path, ("image_auroc",))[2].splitlines()
    assert md[2] == "| category | rd4ad (unified) image_auroc | rd4ad image_auroc |"
    mark = UNDERTRAINED if unified["training"]["undertrained"] else ""  # one epoch: still learning, and said
    own = {c: f"{100 * s['metrics']['image_auroc']:.1f}{mark}" for c, s in unified["per_category"].items()}
    assert md[4:7] == [
        f"| gadget | {own['gadget']} | 25.0 |",
        f"| widget | {own['widget']} | 75.0 |",
        f"| mean | {100 * unified['metrics']['image_auroc']:.1f} | 50.0 |",
    ]
    assert md[0].startswith("Dataset: folder (3 runs;")


def test_category_all_needs_a_dataset_of_several_categories(tiny_mvtec, two_categories):
    from adkd.data.unified import datamodule

    one = compose(tiny_overrides(tiny_mvtec / "widget", "category=all"), "unused")
    with pytest.raises(ConfigError, match="is one category \\(it holds train/good itself\\): category=all"):
        datamodule(one.dataset)
    single = compose(["dataset=ksdd2", "category=all", f"dataset.root={tiny_mvtec}"], "unused")
    with pytest.raises(ConfigError, match="ksdd2 has only one, ksdd2: run category=ksdd2"):
        datamodule(single.dataset)
    with pytest.raises(ConfigError, match="category=all .* is not a category of folder"):
        FolderDataModule(root=str(two_categories), category="all")
    assert datamodule(compose(_overrides(two_categories), "unused").dataset).categories == ("gadget", "widget")


def test_the_data_check_names_the_category_of_a_bad_file(two_categories, tmp_path):
    from adkd.data.unified import datamodule

    root = Path(shutil.copytree(two_categories, tmp_path / "data"))
    bad = root / "gadget" / "test" / "good" / "002.png"
    bad.write_bytes(b"")
    with pytest.raises(DataCheckError) as err:
        datamodule(compose(_overrides(root), "unused").dataset).checked_records()
    assert f"folder/all: 1 of 44 files cannot be used:\n  - gadget: {bad} is empty" in str(err.value)


def test_stored_per_category_thresholds_are_checked_as_values_from_a_file():
    from adkd.deploy import trust

    good = {"a": {"image_threshold": 1.0, "pixel_threshold": 2.0, "image_floor": 0.0, "pixel_floor": float("nan")}}
    assert trust.category_thresholds(good, "x")["a"]["image_threshold"] == 1.0
    with pytest.raises(CheckpointError, match="thresholds of category 'a' are not"):
        trust.category_thresholds({"a": {"image_threshold": 1.0}}, "x")
    with pytest.raises(CheckpointError, match="expected a number"):
        trust.category_thresholds({"a": {**good["a"], "image_threshold": "os.system"}}, "x")


@pytest.mark.slow
@pytest.mark.parametrize("method", method_names())
def test_every_method_trains_unified_and_validates_as_it_does_per_category(method, two_categories, tmp_path):
    """Each method's own recipe (budget=demo's settings for as many steps as the fixture's floor takes
    on twice its images, offline ImageNet weights) on both categories at once:
    its validation (synthetic anomalies in the loader for ADPS, DeSTSeg, DRAEM; gadget's labelled
    val/) runs on the union, each category gets its own thresholds, and both find the squares."""
    from adkd.training.run import run

    overrides = [o for o in _overrides(two_categories) if o not in ("max_epochs=1", "backbone.pretrained=false")]
    steps, seed = f"steps={2 * fixture_steps(method)}", f"seed={fixture_seed(method)}"  # twice the fixture's images
    results = run(
        compose(
            [*overrides, f"method={method}", "budget=demo", steps, seed, f"image_size={smallest_image(method)}"],
            tmp_path,
        )
    )
    assert results["validation"]["pixel_ap"] is not None and results["validation"]["labelled_image_auroc"] is not None
    per_category = results["per_category"]
    assert list(per_category) == ["gadget", "widget"]
    images = [per_category[c]["thresholds"]["image"] for c in per_category]
    assert all(math.isfinite(t) for t in images) and images[0] != images[1]
    floor = {c: (s["metrics"]["image_auroc"], s["metrics"]["pixel_auroc"]) for c, s in per_category.items()}
    # Lower than the per-category floor (0.9, tests/test_run.py): one model for gadget's noisy images
    # too finds widget's squares less sharply (measured: PatchCore's pixel AUROC 0.90 on both, its
    # memory bank holding the noisy patches; DRAEM's image AUROC 0.875 on gadget).
    assert all(min(values) >= 0.8 for values in floor.values()), f"{method}: image and pixel AUROC {floor}"


@pytest.mark.slow
def test_a_categorys_export_carries_its_thresholds_and_says_whose(unified_run, two_categories, tmp_path, capsys):
    import csv

    import onnx

    from adkd.cli import main as adkd

    run_copy = Path(shutil.copytree(unified_run, tmp_path / "run"))
    gadget = json.loads((run_copy / "metrics.json").read_text())["per_category"]["gadget"]["thresholds"]
    assert adkd(["export", str(run_copy), "--category", "gadget"]) == 0
    path = run_copy / "export" / "gadget" / "model.onnx"
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert meta["category"] == "gadget" and float(meta["image_threshold"]) == pytest.approx(gadget["image"])
    images = str(two_categories / "gadget" / "test")
    for engine in ("torch", "onnx"):  # the run folder's export of that category, not exported again
        assert (
            adkd(
                [
                    "predict",
                    str(run_copy),
                    images,
                    "--out",
                    str(tmp_path / engine),
                    "--no-figures",
                    "--engine",
                    engine,
                    "--category",
                    "gadget",
                ]
            )
            == 0
        )
    assert "Exporting" not in capsys.readouterr().err
    rows = {e: list(csv.DictReader((tmp_path / e / "predictions.csv").open())) for e in ("torch", "onnx")}
    scores = {e: [float(r["pred_score"]) for r in rows[e]] for e in rows}
    assert scores["onnx"] == pytest.approx(scores["torch"], rel=1e-4)
    assert [r["decision"] for r in rows["onnx"]] == [r["decision"] for r in rows["torch"]]
    assert adkd(["predict", str(path), images, "--out", str(tmp_path / "w"), "--category", "widget"]) == 1
    assert "carries the thresholds of category 'gadget', and --category asks for 'widget'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_unified_mvtec_ad2_run_sets_each_categorys_segmentation_threshold_and_submits_all(tmp_path, capsys):
    """A dataset with a fixed list (MVTec AD 2's 8 categories, on a replica of its release): its
    own validation/good per category, the segmentation F1 at each category's own threshold, and a
    server submission of every category from the one run."""
    from adkd.cli import main as adkd
    from adkd.deploy.submission import problems
    from adkd.training.run import run
    from tests import replicas

    categories = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts")
    root = replicas.mvtec_ad2(tmp_path / "mvtec_ad2", categories)
    overrides = [o for o in tiny_overrides(root, "method=rd4ad") if not o.startswith(("dataset=", "category="))]
    folder = tmp_path / "run"
    results = run(compose(["dataset=mvtec_ad2", "category=all", *overrides], folder))
    assert list(results["per_category"]) == list(categories)
    segmentation = {c: s["thresholds"]["segmentation"] for c, s in results["per_category"].items()}
    assert all(t is not None for t in segmentation.values()) and len(set(segmentation.values())) == 8
    assert results["thresholds"]["segmentation"] is None  # the model's own: none
    assert all(0 <= s["metrics"]["pixel_seg_f1"] <= 1 for s in results["per_category"].values())
    assert adkd(["submit", str(folder), "--out", str(tmp_path / "submission")]) == 0
    assert "complete, all 8 categories" in capsys.readouterr().out
    assert problems(tmp_path / "submission", root) == ([], [])
