"""adkd.serve over real HTTP: /predict scores as the run's test did, refuses bad requests with 4xx
and a message, the chosen threshold is saved beside the checkpoint and used by predict and export;
and the page in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import httpx
import pytest


@pytest.fixture()
def run_copy(exported_run, tmp_path) -> Path:
    """A copy of the trained run and its ONNX export: choosing a threshold writes into it."""
    return Path(shutil.copytree(exported_run, tmp_path / "run"))


@pytest.fixture()
def served(run_copy):
    from adkd.serve.app import UploadLimit, create_app, running
    from adkd.serve.session import Session

    session = Session(run_copy)
    with running(UploadLimit(create_app(session), 200_000)) as url:
        yield session, url


def _test_scores(run: Path) -> dict[str, float]:
    return {"/".join(Path(r["image_path"]).parts[-2:]): float(r["pred_score"])
            for r in csv.DictReader((run / "test_predictions.csv").open())}  # fmt: skip


def test_predict_over_http_scores_as_the_test_did_and_decides_at_the_threshold(served, tiny_mvtec, run_copy):
    import base64
    import io

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
    overlay = httpx.get(f"{url}/api/overlay/test/0.png")
    assert overlay.status_code == 200 and overlay.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_requests_get_a_4xx_that_says_what_to_send(served, tiny_mvtec):
    _, url = served
    cases = [
        (httpx.post(f"{url}/predict", files={"file": ("notes.txt", b"no image here", "text/plain")}),
         400, "Cannot read image notes.txt: not an image format"),
        (httpx.post(f"{url}/predict", files={"file": ("empty.png", b"", "image/png")}), 400, "is empty"),
        (httpx.post(f"{url}/predict", data={"other": "x"}), 400, "multipart form field 'file'"),
        (httpx.post(f"{url}/predict?mask=perhaps", files={"file": ("a.png", b"x", "image/png")}), 400, "query.mask"),
        (httpx.post(f"{url}/predict", files={"file": ("big.png", b"0" * 300_000, "image/png")}),
         413, "this server takes at most 200,000 bytes"),
        (httpx.post(f"{url}/predict", content=iter([b"0" * 150_000, b"0" * 150_000]),
                    headers={"content-type": "multipart/form-data; boundary=x"}), 413, "more than"),  # chunked
        (httpx.get(f"{url}/api/overlay/test/99.png"), 404, "No image test/99"),
        (httpx.post(f"{url}/api/threshold", json={"image_threshold": "high"}), 400, "image_threshold"),
        (httpx.post(f"{url}/api/score-folder", json={"path": "/nowhere/at/all"}), 400, "is not a folder"),
    ]  # fmt: skip
    for response, status, message in cases:
        assert response.status_code == status, response.text
        assert message in response.json()["detail"]


def test_a_saved_threshold_is_used_by_serve_predict_and_export(served, run_copy, tiny_mvtec, tmp_path, capsys):
    from adkd import operating_point
    from adkd.export import stale_export
    from adkd.predict import main as predict

    session, url = served
    calibrated = session.threshold
    scores = sorted(_test_scores(run_copy).values())
    chosen = (scores[0] + scores[1]) / 2  # all but the lowest-scoring test image are now anomalous
    saved = httpx.post(f"{url}/api/threshold", json={"image_threshold": chosen}).json()
    checkpoint = run_copy / "checkpoints" / "last.ckpt"
    assert Path(saved["saved"]) == operating_point.sidecar_path(checkpoint) == checkpoint.with_name(
        "last.threshold.json")
    record = json.loads(Path(saved["saved"]).read_text())
    assert record["image_threshold"] == pytest.approx(chosen) and record["calibrated_image_threshold"] == calibrated
    with (tiny_mvtec / "widget" / "test" / "good" / "001.png").open("rb") as f:
        assert httpx.post(f"{url}/predict", files={"file": f}).json()["threshold"] == pytest.approx(chosen)

    out = tmp_path / "predicted"
    assert predict([str(run_copy), str(tiny_mvtec / "widget" / "test"), "--out", str(out), "--no-figures"]) == 0
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [float(r["image_threshold"]) for r in rows] == pytest.approx([chosen] * len(rows))
    assert sum(r["decision"] == "anomalous" for r in rows) == len(rows) - 1

    from adkd.export import metadata
    from adkd.inference import load_model

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


def test_serve_says_why_it_cannot_start(trained_run, tmp_path, capsys):
    import socket

    from adkd.serve.__main__ import main

    assert main([str(tmp_path), "--port", "0"]) == 1
    assert "error: No checkpoint at" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main([str(trained_run), "--port", str(port)]) == 1
    assert f"Cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def _browser():
    """Debian's chromium under Selenium (no driver or browser download: both come from apt), or a
    skip that says what to install; ADKD_REQUIRE_BROWSER=1 (CI) turns the skip into a failure."""
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
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_page_in_a_headless_browser(served, run_copy, tiny_mvtec, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    session, url = served
    browser = _browser()
    try:
        browser.get(url)
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
        text = lambda key: browser.find_element(By.ID, key).text  # noqa: E731
        assert text("test-n") == "8" and text("validation-n") == "1"
        tested = _test_scores(run_copy)
        above = sum(s > session.threshold for s in tested.values())
        normal = {k: s for k, s in tested.items() if k.startswith("good/")}
        assert int(text("test-tp")) + int(text("test-fp")) == above
        assert int(text("test-fp")) == sum(s > session.threshold for s in normal.values())
        assert len(browser.find_elements(By.CSS_SELECTOR, "#grid .card")) == 8
        assert browser.execute_script("return document.querySelector('#grid img').naturalWidth") > 0 or \
            wait.until(lambda b: b.execute_script("return document.querySelector('#grid img').naturalWidth") > 0)

        slider = browser.find_element(By.ID, "slider")
        slider.send_keys(Keys.END)  # the highest threshold: nothing is flagged
        assert (text("test-tp"), text("test-fp"), text("test-tn"), text("test-fn")) == ("0", "0", "4", "4")
        assert text("test-recall") == "0.000" and text("test-fpr") == "0.000"
        slider.send_keys(Keys.HOME)  # the lowest: everything is
        assert (text("test-tp"), text("test-fp"), text("test-tn"), text("test-fn")) == ("4", "4", "0", "0")
        browser.find_element(By.ID, "filter").send_keys("false positives")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#grid .card.fp")) == 4

        browser.find_element(By.ID, "save").click()
        wait.until(lambda b: "Saved" in b.find_element(By.ID, "save-status").text)
        chosen = float(browser.find_element(By.ID, "slider").get_attribute("value"))
        sidecar = run_copy / "checkpoints" / "last.threshold.json"
        assert json.loads(sidecar.read_text())["image_threshold"] == pytest.approx(chosen)

        anomalous = tiny_mvtec / "widget" / "test" / "spot" / "000.png"
        browser.find_element(By.ID, "file-input").send_keys(str(anomalous))  # a user picks a file
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#dropped .result"))
        assert "000.png: score" in text("dropped") and "anomalous" in text("dropped")  # the lowest threshold
        browser.execute_script(_DROP, "dropped.png", list(anomalous.read_bytes()))  # a file dropped on the page
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#dropped .result")) == 2)
        assert "dropped.png: score" in text("dropped")
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
    from adkd.config import compose
    from adkd.run import run
    from adkd.serve.session import Session
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
    from adkd.export import parity_images

    images, described = parity_images(session.config)  # an export's parity check falls back to random images
    assert described == "8 random images" and images.shape == (8, 3, 32, 32)
