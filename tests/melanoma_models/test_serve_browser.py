"""The upload page of ``serve`` as a person uses it: real headless Chromium (Debian's, via selenium), a generated
image uploaded through the page's file input, the score read off the rendered page, a screenshot kept."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from melanoma_data import synth
from melanoma_models.runner import fit
from tests.conftest import serving, small_version

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason="the `serve` extra is not installed (uv sync --all-extras)")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("lightgbm", reason="the `gbdt` extra is not installed (uv sync --all-extras)")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (uv sync --all-extras)")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(f"headless Chromium is not installed ({CHROMIUM} and {CHROMEDRIVER}; Debian: apt-get install "
                "chromium chromium-driver)", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny lgbm run (it needs metadata and explains with feature contributions) served on 127.0.0.1."""

    root = tmp_path_factory.mktemp("browser")
    version = small_version(root, n=30, seed=5, size=64, n_folds=2, train_files=4, defects=0.3)
    run = fit("lgbm", version, runs=root / "runs", sets={"num_boost_round": 20, "min_data_in_leaf": 3,
                                                         "early_stopping_rounds": 10}).run_dir
    with serving(run) as port:
        yield {"url": f"http://127.0.0.1:{port}", "run": run, "root": root}


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service as DriverService

    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1100,1600", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=DriverService(executable_path=str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _shot(driver, path: Path) -> np.ndarray:
    from PIL import Image

    driver.save_screenshot(str(path))
    if os.environ.get("H5_SHOT"):  # a copy to look at by hand
        shutil.copy(path, os.environ["H5_SHOT"])
    return np.asarray(Image.open(path).convert("RGB"))


def _generated_jpeg(path: Path, seed: int) -> Path:
    from PIL import Image

    drawn = synth.render(synth.random_spec(np.random.default_rng(seed), True, [(320, 240)], 0.5), seed)
    Image.fromarray(drawn.image).save(path, quality=90)
    return path


@pytest.mark.slow
def test_the_upload_page_scores_a_generated_image_in_chromium(served, browser, tmp_path):
    image = _generated_jpeg(tmp_path / "lesion.jpg", seed=11)
    fields = {"sex": "female", "age_approx": "55", "anatom_site_general_challenge": "torso"}
    browser.get(served["url"] + "/")
    assert "not a medical device" in browser.find_element(By.CLASS_NAME, "notice").text
    meaning = browser.find_element(By.ID, "threshold-meaning").text
    assert re.search(r"flagged \d+% of the melanoma cases \(sensitivity\) and passed \d+% of the others", meaning)
    browser.find_element(By.CSS_SELECTOR, "input[type=file][name=image]").send_keys(str(image))
    Select(browser.find_element(By.NAME, "sex")).select_by_visible_text(fields["sex"])
    browser.find_element(By.NAME, "age_approx").send_keys(fields["age_approx"])
    Select(browser.find_element(By.NAME, "anatom_site_general_challenge")).select_by_visible_text(
        fields["anatom_site_general_challenge"])
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.ID, "score") or d.find_elements(By.ID, "error"))
    assert not browser.find_elements(By.ID, "error"), browser.find_element(By.ID, "error").text
    shown = float(browser.find_element(By.ID, "score").text)
    with httpx.Client(base_url=served["url"], timeout=60) as client:
        want = client.post("/predict", files={"image": (image.name, image.read_bytes(), "image/jpeg")},
                           data=fields).json()
    assert shown == pytest.approx(want["probability"], abs=5e-4)
    assert browser.find_element(By.ID, "decision").text == ("above" if want["decision"] else "below")
    # the processed image and the explanation (top contributions for a GBDT run) are decoded, side by side
    processed, why = browser.find_element(By.ID, "processed"), browser.find_element(By.ID, "contributions")
    for img in (processed, why):
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0
    assert processed.location["y"] == pytest.approx(why.location["y"], abs=5)
    assert why.location["x"] > processed.location["x"] + processed.size["width"]
    assert "feature contributions" in browser.page_source
    pixels = _shot(browser, tmp_path / "page.png")
    assert pixels.shape[1] >= 1000 and pixels.std() > 20  # a rendered page, not a blank one


def test_the_page_shows_a_refusal_with_its_reason(served, browser, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"not an image at all")
    browser.get(served["url"] + "/")
    browser.find_element(By.CSS_SELECTOR, "input[type=file][name=image]").send_keys(str(bad))
    Select(browser.find_element(By.NAME, "sex")).select_by_visible_text("male")
    browser.find_element(By.NAME, "age_approx").send_keys("40")
    Select(browser.find_element(By.NAME, "anatom_site_general_challenge")).select_by_visible_text("torso")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.ID, "error"))
    assert "not_an_image" in browser.find_element(By.ID, "error").text
    assert browser.find_element(By.CSS_SELECTOR, "input[type=file]")  # the form is there to try again
