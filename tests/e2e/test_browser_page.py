"""Drive the web page in headless Chromium: upload a real HAM10000 image, read the result.

Needs Debian's chromium + chromium-driver (scripts/install-browser.sh) and the HAM10000
images (env DERMAE_DATA, default ../shared/data/ham10000 from the repository root).
Run: pytest -m browser tests/e2e. A screenshot goes to $DERMAE_SCREENSHOT
(default /tmp/deploy/page.png).
"""

import os
import shutil
from pathlib import Path

import httpx
import pytest
import torch

from dermae.classify.model import build_classifier, classifier_config, save_classifier
from dermae.config import default_data_root
from dermae.data.classes import HAM10000_CLASSES
from dermae.deploy.export import export_onnx
from dermae.deploy.server import background_server, create_app

pytestmark = pytest.mark.browser

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1200,1100",
]


def ham_image() -> Path:
    root = Path(default_data_root())
    if not root.is_absolute():
        root = (REPO_ROOT / root).resolve()  # chromedriver wants canonical paths
    images = sorted((root / "images").glob("*.jpg"))[:50]
    if not images:
        pytest.skip(f"no HAM10000 images under {root}/images (set DERMAE_DATA)")
    return images[7]


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    if not Path(CHROMEDRIVER).exists() or shutil.which("chromium") is None:
        pytest.skip("chromium / chromedriver not installed (run scripts/install-browser.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    # A profile folder pytest cleans up, instead of one left behind in /tmp.
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.binary_location = shutil.which("chromium")
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(30)
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    torch.manual_seed(0)
    config = classifier_config(
        "test_efficientnet", list(HAM10000_CLASSES), ["akiec", "bcc", "mel"], 64
    )
    ckpt = save_classifier(
        root / "ckpt",
        build_classifier(config),
        {"threshold": {"malignant_risk": 0.42, "specificity": 0.9}},
    )
    export = export_onnx(ckpt, root / "export", int8=False, threads=1)
    with background_server(create_app(export, threads=1)) as url:
        yield url


def wait_for_state(driver, states, timeout=30):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.ID, "result").get_attribute("data-state") in states
    )
    return driver.find_element(By.ID, "result").get_attribute("data-state")


def test_upload_real_image_shows_result(driver, server):
    from selenium.webdriver.common.by import By

    image = ham_image()
    driver.get(server + "/")
    notice = driver.find_element(By.ID, "notice")
    assert notice.is_displayed() and "not a diagnosis" in notice.text.lower()
    driver.find_element(By.ID, "file-input").send_keys(str(image))
    state = wait_for_state(driver, ("done", "error"))
    assert state == "done", driver.find_element(By.ID, "error").text

    api = httpx.post(
        server + "/predict",
        files={"file": (image.name, image.read_bytes(), "image/jpeg")},
        timeout=30,
    ).json()
    bars = driver.find_elements(By.CSS_SELECTOR, "#prob-bars li")
    assert len(bars) == len(HAM10000_CLASSES)
    shown = {b.get_attribute("data-class"): float(b.get_attribute("data-prob")) for b in bars}
    assert shown == pytest.approx(api["probabilities"], abs=1e-9)
    probs = [float(b.get_attribute("data-prob")) for b in bars]
    assert probs == sorted(probs, reverse=True)  # bars sorted, largest first
    assert driver.find_element(By.ID, "top-class").text.startswith(api["prediction"])
    assert driver.find_element(By.ID, "risk-value").text == f"{100 * api['malignant_risk']:.1f}%"
    decision = driver.find_element(By.ID, "decision").text
    assert ("Above the threshold" if api["flagged"] else "Below the threshold") in decision
    assert "threshold 42.0%" in driver.find_element(By.ID, "threshold-label").text
    width = driver.execute_script("return document.getElementById('preview').naturalWidth")
    assert width == 200  # the uploaded HAM10000 image is shown
    shot = Path(os.environ.get("DERMAE_SCREENSHOT", "/tmp/deploy/page.png"))
    shot.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def test_upload_of_a_non_image_shows_the_error(driver, server, tmp_path):
    from selenium.webdriver.common.by import By

    fake = tmp_path / "not-a-photo.jpg"
    fake.write_text("hello")
    driver.get(server + "/")
    driver.find_element(By.ID, "file-input").send_keys(str(fake))
    assert wait_for_state(driver, ("done", "error")) == "error"
    text = driver.find_element(By.ID, "error").text
    assert "422" in text and "not a readable image" in text


def test_busy_server_is_retried_after_retry_after(driver, server):
    from selenium.webdriver.common.by import By

    driver.get(server + "/")
    # The first /predict answers 503 (Retry-After: 1), as a full server does; then the real one.
    driver.execute_script(
        """
        window.predictCalls = 0;
        const realFetch = window.fetch;
        window.fetch = (url, options) => {
          if (url === "/predict" && window.predictCalls++ === 0) {
            return Promise.resolve(new Response(JSON.stringify({detail: "busy"}),
              {status: 503, headers: {"Retry-After": "1"}}));
          }
          return realFetch(url, options);
        };
        """
    )
    driver.find_element(By.ID, "file-input").send_keys(str(ham_image()))
    assert wait_for_state(driver, ("done", "error")) == "done"
    assert driver.execute_script("return window.predictCalls") == 2
