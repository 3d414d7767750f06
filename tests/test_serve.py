"""adkd.deploy.serve over real HTTP: /predict scores as the run's test did, refuses bad requests with 4xx
and a message, the chosen threshold is saved beside the checkpoint and used by predict and export;
and the page in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest


@pytest.fixture()
def run_copy(exported_run, tmp_path) -> Path:
    """A copy of the trained run and its ONNX export: choosing a threshold writes into it."""
    return Path(shutil.copytree(exported_run, tmp_path / "run"))


@pytest.fixture()
def served(run_copy):
    from adkd.deploy.serve.app import UploadLimit, create_app, running
    from adkd.deploy.serve.session import Session

    session = Session(run_copy)
    with running(UploadLimit(create_app(session), 200_000)) as url:
        yield session, url


def _test_scores(run: Path) -> dict[str, float]:
    return {
        "/".join(Path(r["image_path"]).parts[-2:]): float(r["pred_score"])
        for r in csv.DictReader((run / "test_predictions.csv").open())
    }


def test_predict_over_http_scores_as_the_test_did_and_decides_at_the_threshold(served, tiny_mvtec, run_copy):
    import base64

    from PIL import Image

    session, url = served
    tested = _test_scores(run_copy)
    threshold = session.threshold
    assert threshold is not None
    for name, score in tested.items():
        with (tiny_mvtec / "widget" / "test" / name).open("rb") as f:
            answer = httpx.post(f"{url}/predict?mask=true", files={"file": (name, f, "image/png")}).json()
        assert answer["score"] == pytest.approx(score, abs=1e-5)
        assert answer["threshold"] == pytest.approx(threshold)
        assert answer["decision"] == ("anomalous" if score > threshold else "normal")
        assert (answer["normalized_score"] > 0.5) == (score > threshold)
        mask = Image.open(io.BytesIO(base64.b64decode(answer["mask_png"])))
        assert mask.size == (32, 32) and mask.mode == "L"
    listed = httpx.get(f"{url}/api/images").json()
    assert {im["name"]: im["score"] for im in listed if im["split"] == "test"} == pytest.approx(tested, abs=1e-5)
    assert sum(im["split"] == "validation" for im in listed) == 1  # 10% of the 12 normal training images
    assert {im["name"]: im["truth"] for im in listed} == {
        im["name"]: im["name"].startswith("spot/") for im in listed
    }  # the anomalous ones have masks

    # What the page draws: the picture, the raw map (its highest value listed), the truth's mask.
    spot = next(im for im in listed if im["name"] == "spot/000.png")
    where = f"{spot['split']}/{spot['index']}"
    picture = httpx.get(f"{url}/api/image/{where}.png")
    assert picture.status_code == 200 and Image.open(io.BytesIO(picture.content)).size == (32, 32)
    small = Image.open(io.BytesIO(httpx.get(f"{url}/api/image/{where}.png?size=16").content))
    assert small.size == (16, 16)  # never larger than asked
    raw = httpx.get(f"{url}/api/map/{where}")
    assert raw.headers["x-map-size"] == "32x32"
    values = np.frombuffer(raw.content, "<f4").reshape(32, 32)
    assert values.max() == pytest.approx(spot["map_max"], rel=1e-3)
    assert np.allclose(values, session.anomaly_map(spot["split"], spot["index"]).numpy(), rtol=1e-3, atol=1e-6)
    truth = np.asarray(Image.open(io.BytesIO(httpx.get(f"{url}/api/truth/{where}.png").content)))
    expected = np.asarray(Image.open(tiny_mvtec / "widget" / "ground_truth" / "spot" / "000_mask.png")) > 0
    assert ((truth > 0) == expected).all()
    good = next(im for im in listed if not im["truth"])
    missing = httpx.get(f"{url}/api/truth/{good['split']}/{good['index']}.png")
    assert missing.status_code == 404 and "has no ground-truth mask" in missing.json()["detail"]
    # An upload's map, for its heat map on the page: the same as the run's image's.
    with (tiny_mvtec / "widget" / "test" / "spot" / "000.png").open("rb") as f:
        answer = httpx.post(f"{url}/predict?heatmap=true", files={"file": ("000.png", f, "image/png")}).json()
    assert answer["map_size"] == [32, 32] and answer["pixel_threshold"] == pytest.approx(session.pixel_threshold)
    uploaded = np.frombuffer(base64.b64decode(answer["map_f32"]), "<f4").reshape(32, 32)
    assert np.allclose(uploaded, values, rtol=1e-3, atol=1e-6)


def test_the_decisions_csv_counts_as_the_run_scored(served, run_copy):
    session, url = served
    tested = _test_scores(run_copy)
    scores = sorted(tested.values())
    for image_threshold in (None, (scores[2] + scores[3]) / 2, scores[5]):
        query = "" if image_threshold is None else f"?image_threshold={image_threshold!r}"
        response = httpx.get(f"{url}/api/decisions.csv{query}")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
        assert "attachment" in response.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(response.text)))
        used = session.threshold if image_threshold is None else image_threshold
        test = {"/".join(Path(r["image_path"]).parts[-2:]): r for r in rows if r["split"] == "test"}
        assert set(test) == set(tested) and sum(r["split"] == "validation" for r in rows) == 1
        for name, row in test.items():
            anomalous = tested[name] > used  # a score equal to the threshold is normal (scores[5])
            truth = name.startswith("spot/")
            assert row["decision"] == ("anomalous" if anomalous else "normal"), (name, row)
            assert row["outcome"] == ("T" if anomalous == truth else "F") + ("P" if anomalous else "N")
            assert row["defect"] == ("spot" if truth else "good") and row["gt_label"] == str(int(truth))
            assert float(row["image_threshold"]) == pytest.approx(used)
            assert (float(row["normalized_score"]) > 0.5) == anomalous
    # The pixel threshold says where a region is drawn: wherever the map rises above it.
    maps = {(im.split, im.index): im.map_max for split in ("test", "validation") for im in session.images[split]}
    middle = sorted(maps.values())[4]
    rows = list(csv.DictReader(io.StringIO(httpx.get(f"{url}/api/decisions.csv?pixel_threshold={middle!r}").text)))
    assert [r["region"] for r in rows] == ["drawn" if float(r["map_max"]) > middle else "none" for r in rows]
    assert sum(r["region"] == "drawn" for r in rows) == 4


def test_bad_requests_get_a_4xx_that_says_what_to_send(served, tiny_mvtec):
    _, url = served
    cases = [
        (
            httpx.post(f"{url}/predict", files={"file": ("notes.txt", b"no image here", "text/plain")}),
            400,
            "Cannot read image notes.txt: not an image format",
        ),
        (httpx.post(f"{url}/predict", files={"file": ("empty.png", b"", "image/png")}), 400, "is empty"),
        (httpx.post(f"{url}/predict", data={"other": "x"}), 400, "multipart form field 'file'"),
        (httpx.post(f"{url}/predict?mask=perhaps", files={"file": ("a.png", b"x", "image/png")}), 400, "query.mask"),
        (
            httpx.post(f"{url}/predict", files={"file": ("big.png", b"0" * 300_000, "image/png")}),
            413,
            "this server takes at most 200,000 bytes",
        ),
        (
            httpx.post(
                f"{url}/predict",
                content=iter([b"0" * 150_000, b"0" * 150_000]),
                headers={"content-type": "multipart/form-data; boundary=x"},
            ),
            413,
            "more than",
        ),  # chunked
        (httpx.get(f"{url}/api/image/test/99.png"), 404, "No image test/99"),
        (httpx.get(f"{url}/api/map/train/0"), 404, "No image train/0"),
        (httpx.get(f"{url}/api/truth/test/-1.png"), 404, "No image test/-1"),
        (httpx.get(f"{url}/api/decisions.csv?image_threshold=nan"), 400, "image_threshold must be a finite number"),
        (httpx.get(f"{url}/api/decisions.csv?pixel_threshold=high"), 400, "query.pixel_threshold"),
        (httpx.post(f"{url}/api/threshold", json={"image_threshold": "high"}), 400, "image_threshold"),
        (
            httpx.post(f"{url}/api/threshold", json={"image_threshold": 0.5, "pixel_threshold": "x"}),
            400,
            "pixel_threshold must be a number",
        ),
        (httpx.post(f"{url}/api/score-folder", json={"path": "/nowhere/at/all"}), 400, "is not a folder"),
    ]
    for response, status, message in cases:
        assert response.status_code == status, response.text
        assert message in response.json()["detail"]


def test_a_saved_threshold_is_used_by_serve_predict_and_export(served, run_copy, tiny_mvtec, tmp_path, capsys):
    from adkd.cli import main as adkd
    from adkd.deploy import operating_point
    from adkd.deploy.export import stale_export

    session, url = served
    calibrated = session.threshold
    scores = sorted(_test_scores(run_copy).values())
    chosen = (scores[0] + scores[1]) / 2  # all but the lowest-scoring test image are now anomalous
    saved = httpx.post(f"{url}/api/threshold", json={"image_threshold": chosen}).json()
    checkpoint = run_copy / "checkpoints" / "last.ckpt"
    assert (
        Path(saved["saved"]) == operating_point.sidecar_path(checkpoint) == checkpoint.with_name("last.threshold.json")
    )
    record = json.loads(Path(saved["saved"]).read_text())
    assert record["image_threshold"] == pytest.approx(chosen) and record["calibrated_image_threshold"] == calibrated
    with (tiny_mvtec / "widget" / "test" / "good" / "001.png").open("rb") as f:
        assert httpx.post(f"{url}/predict", files={"file": f}).json()["threshold"] == pytest.approx(chosen)

    out = tmp_path / "predicted"
    assert adkd(["predict", str(run_copy), str(tiny_mvtec / "widget" / "test"), "--out", str(out), "--no-figures"]) == 0
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [float(r["image_threshold"]) for r in rows] == pytest.approx([chosen] * len(rows))
    assert sum(r["decision"] == "anomalous" for r in rows) == len(rows) - 1

    from adkd.deploy.checkpoints import load_model
    from adkd.deploy.export import metadata

    model, config = load_model(run_copy)
    exported = metadata(config, model)  # what an export made now carries
    assert float(exported["image_threshold"]) == pytest.approx(chosen)
    assert exported["threshold_choice"] == operating_point.fingerprint(checkpoint) != ""
    onnx_path = run_copy / "export" / "model.onnx"  # exported before the choice: stale now
    assert "was exported before the threshold" in stale_export(onnx_path, checkpoint)

    checkpoint.write_bytes(checkpoint.read_bytes() + b"\0")  # the run trained on: the choice no longer applies
    capsys.readouterr()
    assert operating_point.chosen(checkpoint) is None
    assert "was chosen for another version of last.ckpt" in capsys.readouterr().err


def test_a_saved_pixel_threshold_is_read_back_by_load_model_predict_and_export(served, run_copy, tiny_mvtec, tmp_path):
    from PIL import Image

    from adkd.cli import main as adkd
    from adkd.deploy import operating_point
    from adkd.deploy.checkpoints import load_model
    from adkd.deploy.export import metadata

    session, url = served
    checkpoint = run_copy / "checkpoints" / "last.ckpt"
    calibrated_image, calibrated_pixel = session.threshold, session.pixel_threshold
    spot = max(session.images["test"], key=lambda im: im.map_max)
    pixel = spot.map_max * 0.999  # only the very top of the highest map passes
    saved = httpx.post(f"{url}/api/threshold", json={"image_threshold": 0.25, "pixel_threshold": pixel}).json()
    assert saved["pixel_threshold"] == pytest.approx(pixel) and session.pixel_threshold == pytest.approx(pixel)
    record = json.loads(operating_point.sidecar_path(checkpoint).read_text())
    assert record["pixel_threshold"] == pytest.approx(pixel)
    assert record["calibrated_pixel_threshold"] == pytest.approx(calibrated_pixel)
    assert operating_point.choice(checkpoint) == operating_point.Choice(0.25, pytest.approx(pixel))

    model, config = load_model(run_copy)
    assert float(model.post.pixel_threshold) == pytest.approx(pixel)
    assert float(model.post.image_threshold) == pytest.approx(0.25)
    assert config["checkpoint"]["calibrated_pixel_threshold"] == pytest.approx(calibrated_pixel)
    assert float(metadata(config, model)["pixel_threshold"]) == pytest.approx(pixel)  # what an export carries
    # predict's masks are drawn at it: a pixel or two of the highest map, where the calibrated
    # threshold drew a region.
    out = tmp_path / "predicted"
    image = Path(spot.path)
    assert adkd(["predict", str(run_copy), str(image), "--out", str(out), "--no-figures", "--masks"]) == 0
    mask = np.asarray(Image.open(next((out / "masks").iterdir())))
    assert 0 < (mask > 0).sum() <= 8
    # Saving the image threshold alone keeps the chosen pixel threshold.
    httpx.post(f"{url}/api/threshold", json={"image_threshold": 0.3})
    assert operating_point.choice(checkpoint) == operating_point.Choice(0.3, pytest.approx(pixel))
    # A file written before the pixel threshold could be chosen still loads: the calibrated one stays.
    sidecar = operating_point.sidecar_path(checkpoint)
    old = {"image_threshold": 0.2, "calibrated_image_threshold": calibrated_image}
    sidecar.write_text(json.dumps({**old, "checkpoint_sha256": record["checkpoint_sha256"], "saved": record["saved"]}))
    assert operating_point.choice(checkpoint) == operating_point.Choice(0.2, None)
    model, config = load_model(run_copy)
    assert float(model.post.image_threshold) == pytest.approx(0.2)
    assert float(model.post.pixel_threshold) == pytest.approx(calibrated_pixel)
    assert "calibrated_pixel_threshold" not in config["checkpoint"]


def test_serve_says_why_it_cannot_start(trained_run, tmp_path, capsys):
    import socket

    from adkd.cli import main as adkd

    assert adkd(["serve", str(tmp_path), "--port", "0"]) == 1
    assert "error: No checkpoint at" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert adkd(["serve", str(trained_run), "--port", str(port)]) == 1
    assert f"Cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def _browser(downloads: Path | None = None, phone: bool = False):
    """Debian's chromium under Selenium (no driver or browser download: both come from apt), or a
    skip that says what to install; ADKD_REQUIRE_BROWSER=1 (CI) turns the skip into a failure.
    ``downloads``: the folder downloads go to; ``phone``: a 390 px wide phone's screen (a mobile
    viewport: without the page's viewport tag it would lay out 980 px wide)."""
    import os

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        why = "the browser test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get("ADKD_REQUIRE_BROWSER") == "1":
            pytest.fail(why)
        pytest.skip(why)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    if downloads is not None:
        options.add_experimental_option(
            "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
        )
    browser = webdriver.Chrome(service=Service(driver), options=options)
    if downloads is not None:
        browser.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    if phone:
        metrics = {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True})
    return browser


def _significant(shown: str) -> int:
    """How many significant digits a number shown on the page has."""
    return len(re.sub(r"\D", "", shown.lower().split("e")[0]).lstrip("0"))


@pytest.mark.parametrize("width", [1400, 390], ids=["desktop-1400px", "phone-390px"])
def test_the_page_in_a_headless_browser(width, served, run_copy, tiny_mvtec, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from adkd.deploy.checkpoints import load_model

    session, url = served
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser = _browser(downloads, phone=width == 390)
    try:
        browser.get(url)
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
        js = browser.execute_script
        text = lambda key: browser.find_element(By.ID, key).text  # noqa: E731
        press = lambda key: ActionChains(browser).send_keys(key).perform()  # noqa: E731

        # It fits the screen: no horizontal scroll, the labels over the pictures are HTML and legible.
        assert js("return window.innerWidth") == width
        assert js("return document.documentElement.scrollWidth") <= width
        js("document.getElementById('grid').scrollIntoView()")  # cards draw their maps once in view
        wait.until(lambda b: js("return document.querySelector('#grid canvas').dataset.painted !== undefined"))
        sizes = js(
            "return [...document.querySelectorAll('#grid .pic .badge')]"
            ".map((b) => parseFloat(getComputedStyle(b).fontSize))"
        )
        assert len(sizes) >= 8 * 3 and min(sizes) >= 12

        assert text("test-n") == "8" and text("validation-n") == "1"
        tested = _test_scores(run_copy)
        above = sum(s > session.threshold for s in tested.values())
        normal = {k: s for k, s in tested.items() if k.startswith("good/")}
        assert int(text("test-tp")) + int(text("test-fp")) == above
        assert int(text("test-fp")) == sum(s > session.threshold for s in normal.values())
        assert len(browser.find_elements(By.CSS_SELECTOR, "#grid .card")) == 8
        shown = browser.find_element(By.ID, "threshold-value").get_attribute("value")
        assert float(shown) == pytest.approx(session.threshold, rel=1e-3) and _significant(shown) <= 4
        assert text("validation-precision") == "n/a" and text("validation-recall") == "n/a"  # no anomalies there

        # The histogram: axes with ticks, and a point for every image, in either range.
        for choice in ("every score", "near the threshold"):
            Select(browser.find_element(By.ID, "hist-range")).select_by_visible_text(choice)
            dots = len(browser.find_elements(By.CSS_SELECTOR, "#histogram circle.dot"))
            beyond = js(
                "return ['hist-lower', 'hist-higher'].map((id) => document.getElementById(id))"
                ".reduce((n, e) => n + (e ? parseInt(e.textContent.replace(/\\D/g, '')) : 0), 0)"
            )
            assert dots + beyond == 9 and (dots == 9 or choice != "every score"), choice
            assert len(browser.find_elements(By.CSS_SELECTOR, "#histogram .axis text")) >= 2 + 3 + 2
        assert len(browser.find_elements(By.ID, "hist-threshold")) == 1  # the threshold's line, dashed

        # The operating point moves on the ROC and PR curves with the slider.
        slider = browser.find_element(By.ID, "slider")
        marker = lambda: [float(browser.find_element(By.ID, "roc-marker").get_attribute(a)) for a in ("cx", "cy")]  # noqa: E731
        slider.send_keys(Keys.END)  # the highest threshold: nothing is flagged
        assert (text("test-tp"), text("test-fp"), text("test-tn"), text("test-fn")) == ("0", "0", "4", "4")
        assert text("test-recall") == "0.000" and text("test-fpr") == "0.000" and text("test-precision") == "n/a"
        at_top = marker()
        assert text("roc-marker-label") == "FPR 0.000, recall 0.000"
        assert not browser.find_elements(By.ID, "pr-marker") and "n/a" in text("pr-marker-label")
        slider.send_keys(Keys.HOME)  # the lowest: everything is
        assert (text("test-tp"), text("test-fp"), text("test-tn"), text("test-fn")) == ("4", "4", "0", "0")
        at_bottom = marker()
        assert at_bottom[0] > at_top[0] and at_bottom[1] < at_top[1]  # from (0, 0) to (1, 1)
        assert text("roc-marker-label") == "FPR 1.000, recall 1.000"
        assert text("pr-marker-label") == "recall 1.000, precision 0.5000"
        assert [r.text.split()[:3] for r in browser.find_elements(By.CSS_SELECTOR, "#defects tr[data-defect]")] == [
            ["spot", "4", "4"]
        ]

        # The decisions as CSV, at a threshold typed in: the counts the page shows.
        scores = sorted(tested.values())
        chosen = (scores[3] + scores[4]) / 2
        box = browser.find_element(By.ID, "threshold-value")
        box.clear()
        box.send_keys(repr(chosen), Keys.TAB)
        assert _significant(box.get_attribute("value")) <= 4
        page = {
            split: {key.upper(): int(text(f"{split}-{key}")) for key in ("tp", "fp", "tn", "fn")}
            for split in ("test", "validation")
        }
        assert page["test"]["TP"] + page["test"]["FP"] == sum(s > chosen for s in scores) == 4
        browser.find_element(By.ID, "download-csv").click()
        wait.until(lambda b: [p for p in downloads.iterdir() if p.suffix == ".csv"])
        rows = list(csv.DictReader(next(p for p in downloads.iterdir() if p.suffix == ".csv").open()))
        assert {
            split: {
                key: sum(r["outcome"] == key for r in rows if r["split"] == split) for key in ("TP", "FP", "TN", "FN")
            }
            for split in ("test", "validation")
        } == page
        assert {float(r["image_threshold"]) for r in rows} == {chosen}

        # Zoom: click (tap) a card, arrows move, the heat map with its scale, Esc closes.
        cards = browser.find_elements(By.CSS_SELECTOR, "#grid .card")
        names = [c.get_attribute("data-name") for c in cards]
        zoom = browser.find_element(By.ID, "zoom")
        assert not zoom.is_displayed()
        cards[0].click()
        wait.until(lambda b: zoom.is_displayed())
        assert text("zoom-title") == names[0] and text("zoom-position") == "1 / 8"
        assert js("return document.documentElement.scrollWidth") <= width
        press(Keys.ARROW_RIGHT)
        assert text("zoom-title") == names[1]
        press(Keys.ARROW_LEFT)
        press(Keys.ARROW_LEFT)
        assert text("zoom-title") == names[-1]  # round to the last
        browser.find_element(By.XPATH, "//input[@name='zoom-view'][@value='heat']/..").click()
        layer = "document.getElementById('zoom-layer')"
        wait.until(lambda b: js(f"return {layer}.dataset.view") == "heat")
        assert js(
            f"const c = {layer}; return c.getContext('2d').getImageData(c.width >> 1, c.height >> 1, 1, 1).data[3]"
        )
        assert browser.find_element(By.ID, "zoom-scale").is_displayed() and "\u2265" in text("zoom-scale")
        browser.find_element(By.XPATH, "//input[@name='zoom-view'][@value='region']/..").click()
        wait.until(lambda b: js(f"return {layer}.dataset.view") == "region")
        assert "pixel thr." in text("zoom-region")
        press(Keys.ESCAPE)
        assert not zoom.is_displayed()
        # Keyboard in the grid: arrows move between cards, Enter opens one.
        cards = browser.find_elements(By.CSS_SELECTOR, "#grid .card")
        js("arguments[0].focus()", cards[0])
        press(Keys.ARROW_RIGHT)
        assert js("return document.activeElement.dataset.name") == names[1]
        press(Keys.ENTER)
        wait.until(lambda b: zoom.is_displayed())
        assert text("zoom-title") == names[1]
        # The pixel threshold moved from the zoom: above every map, no region; the page's box follows.
        browser.find_element(By.ID, "zoom-pixel").send_keys(Keys.END)
        assert text("zoom-region").startswith("none > pixel thr.")
        highest = float(browser.find_element(By.ID, "zoom-pixel").get_attribute("value"))
        assert highest > max(im.map_max for im in session.images["test"])
        assert float(browser.find_element(By.ID, "pixel-value").get_attribute("value")) == pytest.approx(
            highest, rel=1e-3
        )
        press(Keys.ESCAPE)
        assert not zoom.is_displayed() and js("return document.activeElement.dataset.name") == names[1]
        if width < 1000:
            return

        # The pixel threshold: moved on the page, said on every card, saved with the image threshold.
        maxima = sorted(im.map_max for im in session.images["test"])
        pixel = (maxima[5] + maxima[6]) / 2  # two test images keep a region
        box = browser.find_element(By.ID, "pixel-value")
        box.clear()
        box.send_keys(repr(pixel), Keys.TAB)
        badges = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#grid .badge.region")]
        assert all(f"pixel thr. {pixel:#.4g}" in b for b in badges) and len(badges) == 8
        assert sum(not b.startswith("none") for b in badges) == 2
        browser.find_element(By.ID, "save").click()
        wait.until(lambda b: "Saved" in b.find_element(By.ID, "save-status").text)
        assert f"pixel threshold {pixel:#.4g}" in text("save-status")
        sidecar = json.loads((run_copy / "checkpoints" / "last.threshold.json").read_text())
        assert sidecar["image_threshold"] == chosen and sidecar["pixel_threshold"] == pixel
        model, _ = load_model(run_copy)
        assert float(model.post.image_threshold) == pytest.approx(chosen)
        assert float(model.post.pixel_threshold) == pytest.approx(pixel)

        slider.send_keys(Keys.HOME)
        anomalous = tiny_mvtec / "widget" / "test" / "spot" / "000.png"
        browser.find_element(By.ID, "file-input").send_keys(str(anomalous))  # a user picks a file
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#dropped .result"))
        assert "000.png" in text("dropped") and "anomalous" in text("dropped")  # the lowest threshold
        browser.execute_script(_DROP, "dropped.png", list(anomalous.read_bytes()))  # a file dropped on the page
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#dropped .result")) == 2)
        assert "dropped.png" in text("dropped")
        browser.find_element(By.CSS_SELECTOR, "#dropped .card").click()  # the last one: first
        wait.until(lambda b: zoom.is_displayed())
        assert text("zoom-title") == "dropped.png" and text("zoom-position") == "1 / 2"
        browser.find_element(By.XPATH, "//input[@name='zoom-view'][@value='heat']/..").click()
        wait.until(lambda b: js(f"return {layer}.dataset.view") == "heat")
        assert js(
            f"const c = {layer}; return c.getContext('2d').getImageData(c.width >> 1, c.height >> 1, 1, 1).data[3]"
        )
        browser.find_element(By.ID, "zoom-close").click()
        assert not zoom.is_displayed()
        # The run's settings.
        browser.find_element(By.CSS_SELECTOR, "#settings summary").click()
        settings = {
            r.find_elements(By.TAG_NAME, "td")[0].text: r.find_elements(By.TAG_NAME, "td")[1].text
            for r in browser.find_elements(By.CSS_SELECTOR, "#settings-table tr")
        }
        assert settings["image_size"] == "32" and settings["method_name"] == "rd4ad"
    finally:
        browser.quit()


# A drop event with a DataTransfer holding one file, as the browser fires it for a file dragged
# from the desktop (WebDriver cannot drag from outside the page).
_DROP = """
const [name, bytes] = arguments;
const transfer = new DataTransfer();
transfer.items.add(new File([new Uint8Array(bytes)], name, {type: "image/png"}));
document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));
"""


def test_a_run_whose_images_are_gone_still_serves_new_ones(tiny_mvtec, tmp_path):
    from adkd.deploy.serve.session import Session
    from adkd.training.config import compose
    from adkd.training.run import run
    from tests.conftest import tiny_overrides

    data = Path(shutil.copytree(tiny_mvtec, tmp_path / "data"))
    run(compose(tiny_overrides(data, "method=stfpm"), tmp_path / "run"))
    image = (data / "widget" / "test" / "spot" / "000.png").read_bytes()
    shutil.rmtree(data)  # the run came from another machine
    session = Session(tmp_path / "run")
    assert "The run's images are not at hand here" in session.images_note
    assert "No training images" in session.images_note
    assert session.images == {"test": [], "validation": []}
    assert session.predict_bytes(image, "000.png")["decision"] in ("normal", "anomalous")
    from adkd.deploy.export import parity_images

    images, described = parity_images(session.config)  # an export's parity check falls back to random images
    assert described == "8 random images" and images.shape == (8, 3, 32, 32)


# What one request, or one file, must not break ---------------------------------------------------


def _lying_png(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header declares ``width`` x ``height`` pixels (its data is
    one pixel's): only a reader that decodes before it checks the size would spend memory on it."""
    import io
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), "gray").save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    header = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return bytes(data)


def test_a_bad_save_writes_nothing_and_answers_400(served, run_copy):
    _, url = served
    sidecar = run_copy / "checkpoints" / "last.threshold.json"
    bad = [
        ({"image_threshold": -1e300}, "within float32's range"),
        ({"image_threshold": 1e39}, "float32"),
        ({"image_threshold": "1.0"}, "must be a number"),
        ({"image_threshold": True}, "must be a number"),
        ({"image_threshold": None}, "must be a number"),
        ({"image_threshold": [1]}, "must be a number"),
        ({"image_threshold": 1.0, "other": 2}, "other"),
        ({}, "image_threshold"),
    ]
    for body, message in bad:
        response = httpx.post(f"{url}/api/threshold", json=body)
        assert response.status_code == 400 and message in response.json()["detail"], (body, response.text)
    for text in ('{"image_threshold": 1e400}', '{"image_threshold": NaN}', '{"image_threshold": -Infinity}'):
        response = httpx.post(f"{url}/api/threshold", content=text, headers={"content-type": "application/json"})
        assert response.status_code == 400, (text, response.text)
    assert not sidecar.exists()
    assert httpx.post(f"{url}/api/threshold", json={"image_threshold": 3.0e38}).status_code == 200  # float32 holds it


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"image_threshold": -1e300, "checkpoint_sha256": "%s"}', "within float32's range"),
        ('{"image_threshold": "0.5", "checkpoint_sha256": "%s"}', "expected a number"),
        ('{"image_threshold": NaN, "checkpoint_sha256": "%s"}', "no image threshold (NaN)"),
        ('{"image_threshold": 0.5, "checkpoint_sha256": "%s", "_target_": "os.system"}', "'_target_', which adkd"),
        ('{"image_threshold": 0.5, "checkpoint_sha256": 7}', "does not name the checkpoint"),
        ('{"image_threshold": 0.5, "checkpoint_sha256": "%s", "calibrated_image_threshold": "x"}', "calibrated"),
        ('{"image_threshold": 0.5, "pixel_threshold": "0.1", "checkpoint_sha256": "%s"}', "pixel_threshold '0.1'"),
        ('{"image_threshold": 0.5, "pixel_threshold": null, "checkpoint_sha256": "%s"}', "pixel_threshold None"),
        ('{"image_threshold": 0.5, "pixel_threshold": NaN, "checkpoint_sha256": "%s"}', "no pixel threshold (NaN)"),
        ('{"image_threshold": 0.5, "pixel_threshold": 1e39, "checkpoint_sha256": "%s"}', "gives pixel_threshold 1e+39"),
        (
            '{"image_threshold": 0.5, "pixel_threshold": 0.1, "calibrated_pixel_threshold": true, "checkpoint_sha256": "%s"}',
            "calibrated_pixel_threshold True",
        ),
        ('{"image_threshold": 0.5', "Cannot read"),
        ("[1, 2]", "holds no image_threshold"),
        (" " * 100_000, "not a threshold choice adkd wrote"),
    ],
)
def test_a_bad_threshold_file_is_refused_in_one_line_by_predict_export_and_serve(
    text, message, run_copy, tmp_path, capsys
):
    from adkd.deploy import operating_point
    from adkd.deploy.trust import file_digest
    from adkd.errors import CheckpointError

    checkpoint = run_copy / "checkpoints" / "last.ckpt"
    sidecar = operating_point.sidecar_path(checkpoint)
    sidecar.write_text(text.replace("%s", file_digest(checkpoint)))
    with pytest.raises(CheckpointError, match=re.escape(message)) as refused:
        operating_point.chosen(checkpoint)
    assert str(sidecar) in str(refused.value) and "delete it" in str(refused.value)
    if message != "within float32's range":
        return
    from adkd.cli import main as adkd

    images = run_copy.parent / "images"
    images.mkdir()
    (images / "part.png").write_bytes(_lying_png(32, 32))
    capsys.readouterr()
    for command in (
        lambda: adkd(["predict", str(run_copy), str(images), "--out", str(tmp_path / "out")]),
        lambda: adkd(["export", str(run_copy), "--out", str(tmp_path / "m.onnx")]),
        lambda: adkd(["serve", str(run_copy), "--port", "0"]),
    ):
        assert command() == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {sidecar} gives image_threshold -1e+300"), lines
        assert "delete it (the calibrated threshold is then used) and choose the threshold again" in lines[0]
    assert not (tmp_path / "m.onnx").exists()


def test_a_threshold_file_holds_the_pixel_threshold_checked_and_per_category(tmp_path):
    from adkd.deploy import operating_point
    from adkd.errors import UserError

    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_bytes(b"weights")
    path = operating_point.save(checkpoint, 1.5, 1.0, "widget", pixel_threshold=0.25, calibrated_pixel=0.2)
    assert path.name == "last.widget.threshold.json"
    assert json.loads(path.read_text())["calibrated_pixel_threshold"] == 0.2
    assert operating_point.choice(checkpoint, category="widget") == operating_point.Choice(1.5, 0.25)
    assert operating_point.chosen(checkpoint, category="widget") == 1.5
    assert operating_point.choice(checkpoint) is None  # another category's file is not this one's
    for bad in (float("nan"), float("inf"), "0.3", True, 1e39):
        with pytest.raises(UserError, match="pixel_threshold must be"):
            operating_point.save(checkpoint, 2.0, 1.0, "widget", pixel_threshold=bad)
    assert operating_point.choice(checkpoint, category="widget") == operating_point.Choice(1.5, 0.25)  # untouched
    operating_point.save(checkpoint, 2.0, 1.0, "widget")  # the image threshold alone: the calibrated pixel one
    assert operating_point.choice(checkpoint, category="widget") == operating_point.Choice(2.0, None)
    assert "pixel_threshold" not in json.loads(path.read_text())


def test_many_concurrent_saves_all_succeed_and_leave_one_whole_file(served, run_copy):
    from concurrent.futures import ThreadPoolExecutor

    session, url = served
    values = [0.001 * i for i in range(160)]
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=32)) as client:
        post = lambda v: client.post(f"{url}/api/threshold", json={"image_threshold": v})  # noqa: E731
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(post, values))
    assert [a.status_code for a in answers] == [200] * len(values)
    folder = run_copy / "checkpoints"
    saved = json.loads((folder / "last.threshold.json").read_text())["image_threshold"]
    assert saved in values and session.threshold == pytest.approx(saved)  # the last one saved is the one in use
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


_SAVER = """
import sys
from pathlib import Path
from adkd.deploy import operating_point
checkpoint = Path(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    i += 1
    operating_point.save(checkpoint, float(i), 0.5)
"""


def test_a_save_killed_at_any_moment_leaves_a_loadable_choice_and_no_temporary_file(tmp_path):
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    from adkd.deploy import operating_point

    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_bytes(b"weights")
    sidecar = operating_point.sidecar_path(checkpoint)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    rng, left_behind = random.Random(0), 0
    for _ in range(12):
        saver = subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(checkpoint)], env=env, stdout=subprocess.PIPE, text=True
        )
        assert saver.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.0, 0.05))
        saver.send_signal(signal.SIGKILL)
        saver.wait()
        left_behind += len(list(tmp_path.glob(".last.threshold.json.*.tmp")))
        value = operating_point.chosen(checkpoint)  # what predict, export and serve read at their start
        assert value is None or value >= 1.0
        assert value is None or not sidecar.exists() or json.loads(sidecar.read_text())["image_threshold"] == value
        assert list(tmp_path.glob(".last.threshold.json.*.tmp")) == []  # cleaned at that start
    # A dead writer's file goes; one a live writer holds (locked) stays.
    dead, live = tmp_path / ".last.threshold.json.dead.tmp", tmp_path / ".last.threshold.json.live.tmp"
    dead.write_text('{"image_threshold": 1')
    live.write_text("")
    import fcntl

    with live.open() as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert operating_point.clean_partial(sidecar) == [dead]
    assert live.exists() and not dead.exists()


def test_an_image_larger_than_max_pixels_is_refused_from_its_header(served, tiny_mvtec):
    session, url = served
    from adkd.deploy.serve import DEFAULT_MAX_PIXELS

    assert session.max_pixels == DEFAULT_MAX_PIXELS == 40_000_000
    response = httpx.post(f"{url}/predict", files={"file": ("big.png", _lying_png(8000, 6000), "image/png")})
    assert response.status_code == 413, response.text
    assert response.json()["detail"] == (
        "Image big.png is 8000x6000 pixels: this server decodes at most 40,000,000 "
        "pixels (40 megapixels, --max-pixels). Send a smaller image."
    )
    response = httpx.post(f"{url}/predict", files={"file": ("huge.png", _lying_png(13000, 13000), "image/png")})
    assert response.status_code == 413 and "this server decodes at most 40,000,000 pixels" in response.text
    session.max_pixels = 32 * 32
    with (tiny_mvtec / "widget" / "test" / "good" / "000.png").open("rb") as f:
        assert httpx.post(f"{url}/predict", files={"file": f}).status_code == 200  # 32x32: at the limit
    session.max_pixels = 32 * 32 - 1
    with (tiny_mvtec / "widget" / "test" / "good" / "000.png").open("rb") as f:
        assert httpx.post(f"{url}/predict", files={"file": f}).status_code == 413


def test_only_the_servers_own_names_and_pages_are_answered(run_copy, served):
    from adkd.deploy.serve.app import Guard, create_app, host_names, running

    session, url = served
    port = url.rsplit(":", 1)[1]
    sidecar = run_copy / "checkpoints" / "last.threshold.json"
    save = {"image_threshold": 1.0}
    refused = [
        httpx.post(f"{url}/api/threshold", json=save, headers={"Host": "evil.example.com"}),
        httpx.post(f"{url}/api/threshold", json=save, headers={"Host": f"evil.example.com:{port}"}),
        httpx.post(f"{url}/api/threshold", json=save, headers={"Host": "127.0.0.1:1"}),
        httpx.get(f"{url}/api/images", headers={"Host": "evil.example.com"}),
        httpx.post(f"{url}/api/threshold", json=save, headers={"Origin": "http://evil.example.com"}),
        httpx.post(f"{url}/api/threshold", json=save, headers={"Origin": f"http://localhost:{int(port) + 1}"}),
        httpx.post(f"{url}/api/threshold", json=save, headers={"Origin": "null"}),
        httpx.post(f"{url}/api/threshold", json=save, headers={"Sec-Fetch-Site": "cross-site"}),
        httpx.post(f"{url}/api/score-folder", json={"path": "/"}, headers={"Origin": "http://evil.example.com"}),
    ]
    for response in refused:
        assert response.status_code == 403 and response.json()["detail"].startswith("Refused: "), response.text
    assert "DNS rebinding" in refused[0].json()["detail"] and "another origin" in refused[4].json()["detail"]
    assert not sidecar.exists()
    for headers in (
        {},
        {"Host": f"localhost:{port}"},
        {"Host": "localhost"},
        {"Host": f"[::1]:{port}"},
        {"Origin": url, "Sec-Fetch-Site": "same-origin"},
        {"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"},
    ):
        assert httpx.post(f"{url}/api/threshold", json=save, headers=headers).status_code == 200, headers
    assert httpx.get(f"{url}/api/run", headers={"Origin": "http://evil.example.com"}).status_code == 200  # reads
    # Served on every address: IP addresses and --allow-host names too, never another name.
    guard = Guard(None, host_names("0.0.0.0"), any_address=True, proxied=frozenset({"inspect.example.org"}))

    def ask(host):
        return guard.refusal(
            {
                "method": "GET",
                "server": ("0.0.0.0", 8000),
                "headers": [(b"host", host.encode())],
            }
        )

    assert ask("192.168.1.20:8000") is None and ask("inspect.example.org") is None and ask("[fe80::1]:8000") is None
    assert ask("evil.example.com:8000") is not None and ask("192.168.1.20:9000") is not None
    with running(create_app(session, host="127.0.0.1", allowed_hosts=["inspect.example.org"])) as other:
        assert httpx.get(f"{other}/api/run", headers={"Host": "inspect.example.org"}).status_code == 200


def test_serve_names_the_port_range_and_blames_a_bad_host_on_the_host(trained_run, capsys):
    from adkd.cli import main as adkd

    for argv, expected in [
        (["--port", "99999"], "error: --port 99999 is not a port: give a number from 1 to 65535"),
        (["--port", "-1"], "error: --port -1 is not a port"),
        (["--host", "nosuch.invalid"], "error: Cannot listen on --host 'nosuch.invalid': the name cannot be resolved"),
        (
            ["--host", "192.0.2.1"],
            "error: Cannot listen on --host 192.0.2.1 (Cannot assign requested address): it is "
            "not an address of this machine",
        ),
        (["--max-pixels", "0"], "error: --max-pixels must be above 0"),
    ]:
        assert adkd(["serve", str(trained_run), *argv]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), lines
        assert "--port" not in lines[0] or "port" in expected


def test_folder_scoring_stops_walking_at_its_cap_and_when_the_client_goes(served, tmp_path, monkeypatch):
    import time

    from adkd.deploy.predict import walk_images
    from adkd.deploy.serve import app

    session, url = served
    image = _lying_png(32, 32)
    for i in range(10):
        (tmp_path / "tree" / f"d{i}").mkdir(parents=True)
        (tmp_path / "tree" / f"d{i}" / "a.png").write_bytes(image)
    visited = []
    first = list(walk_images(tmp_path / "tree", stop=lambda: visited.append(1) or False))
    assert [p.parent.name for p in first] == [f"d{i}" for i in range(10)] and len(visited) == 10
    monkeypatch.setattr(app, "MAX_FOLDER_IMAGES", 3)
    visited.clear()
    with pytest.raises(app.HTTPException, match="holds more than 3 images"):
        app._score_folder(session, tmp_path / "tree", stop=lambda: visited.append(1) or False)
    assert len(visited) == 4  # the walk stopped at the 4th image: 6 folders never read

    monkeypatch.setattr(app, "MAX_FOLDER_IMAGES", 5000)
    scored = []
    slow = session.predict_file

    def predict_file(*args, **kwargs):  # noqa: ANN002, ANN003
        scored.append(1)
        time.sleep(0.05)
        return slow(*args, **kwargs)

    monkeypatch.setattr(session, "predict_file", predict_file)
    many = tmp_path / "many"
    many.mkdir()
    for i in range(200):
        (many / f"{i:03d}.png").write_bytes(image)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/api/score-folder", json={"path": str(many)}, timeout=0.5)
    time.sleep(1.0)
    given_up_at = len(scored)
    time.sleep(0.5)
    assert len(scored) == given_up_at < 60  # stopped within about half a second of the client going


def test_sigterm_stops_the_server_at_once_while_it_scores_a_folder(trained_run, tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys
    import threading
    import time

    from PIL import Image

    root = Path(__file__).resolve().parents[1]
    folder = tmp_path / "images"
    folder.mkdir()
    source = folder / "0000.png"
    Image.new("RGB", (32, 32), "gray").save(source)
    for i in range(1, 3000):
        os.link(source, folder / f"{i:04d}.png")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "adkd", "serve", str(trained_run), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert "Serving" in next(line for line in server.stdout if "Serving" in line or "error" in line)
        url = f"http://127.0.0.1:{port}"
        answer = {}
        post = lambda: answer.update(r=httpx.post(f"{url}/api/score-folder", json={"path": str(folder)}, timeout=120))  # noqa: E731
        thread = threading.Thread(target=post)
        thread.start()
        time.sleep(3.0)  # scoring: 3000 images take far longer
        start = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        stopped = time.monotonic() - start
        thread.join(timeout=30)
    finally:
        server.kill()
    assert "r" in answer, "the folder's request got no answer"
    assert answer["r"].status_code == 503 and "the server is stopping" in answer["r"].json()["detail"], answer
    assert stopped < 3.0, f"took {stopped:.1f} s to stop"
