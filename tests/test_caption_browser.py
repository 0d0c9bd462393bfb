"""caption.py's web page in a real headless browser: choose a picture, see its caption, its beams and,
hovering over a word, the heat map of where the model looked; a dropped non-image shows the error.

Needs Chromium, its driver and Selenium (CI installs them in .ci/run); without them the test skips:

    apt-get update && apt-get install -y chromium chromium-driver && pip install selenium

The README's screenshot comes from this test with a trained model (all paths read-only but the PNG)::

    CAPTION_SCREENSHOT=docs/figures/caption_page.png \\
    CAPTION_CHECKPOINT=runs/shapes_captioner/checkpoint_best.pt \\
    CAPTION_IMAGE=data/shapes/raw/val2017/000001000006.jpg CAPTION_WORD=11 \\
    python -m pytest -q -p no:cacheprovider tests/test_caption_browser.py

(``CAPTION_WORD``: the position of the word whose heat map the screenshot shows.)
"""

import base64
import io
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch
from test_caption import draw_image, make_tiny_checkpoint

from captioner.evaluation.own_images import ImageCaptioner
from captioner.serve.server import CaptionServer

INSTALL = ("needs Chromium, chromedriver and Selenium: apt-get update && apt-get install -y chromium "
           "chromium-driver && pip install selenium")
WAIT_S = 20


def chrome_or_skip():
    """A started headless Chromium driven by Selenium, or skip the test saying how to install them."""
    try:
        from selenium import webdriver
    except ImportError:
        pytest.skip(INSTALL)
    browser = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(name)), None)
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.skip(INSTALL)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1000,720"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(driver_path))


@pytest.fixture()
def page(tmp_path):
    """A server on a free port with the tiny test checkpoint (or $CAPTION_CHECKPOINT), and its captioner."""
    checkpoint = os.environ.get("CAPTION_CHECKPOINT") or make_tiny_checkpoint(tmp_path / "run")
    captioner = ImageCaptioner.from_checkpoint(checkpoint, torch.device("cpu"))
    server = CaptionServer(captioner, "127.0.0.1", 0, log=io.StringIO())
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_the_page_captions_an_upload_and_shows_where_each_word_looked(page, tmp_path):
    image = Path(os.environ.get("CAPTION_IMAGE") or draw_image(tmp_path / "red disc.png", (220, 30, 30)))
    expected = page.captioner.caption([page.captioner.load(image)], top=page.captioner.beam_size, attention=True)[0]
    driver = chrome_or_skip()
    from selenium.webdriver import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, WAIT_S)
    try:
        driver.get(page.url)
        driver.find_element(By.ID, "file").send_keys(str(image.resolve()))  # the file picker
        wait.until(lambda d: d.find_element(By.ID, "result").is_displayed())

        # the caption, word by word, and every beam with its score, best first
        spans = driver.find_elements(By.CSS_SELECTOR, "#caption .word")
        assert [s.text for s in spans] == expected.beams[0].words and spans
        beams = driver.find_elements(By.CSS_SELECTOR, "#beams li")
        assert len(beams) == len(expected.beams)
        for li, hypothesis in zip(beams, expected.beams):
            assert li.text == f"{hypothesis.score:.3f} {hypothesis.caption}".strip()

        # hovering over a word puts its heat map in place of the image; clicking pins it
        view = driver.find_element(By.ID, "view")
        plain = view.get_attribute("src")
        assert plain.startswith("data:image/png;base64,")
        k = int(os.environ.get("CAPTION_WORD", "0")) % len(spans)
        ActionChains(driver).move_to_element(spans[k]).perform()
        wait.until(lambda d: view.get_attribute("src") != plain)
        assert view.get_attribute("data-word") == expected.beams[0].words[k]
        assert expected.beams[0].words[k] in driver.find_element(By.ID, "shown").text
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", view) \
               == page.captioner.image_size  # a real picture, decoded by the browser
        spans[k].click()
        ActionChains(driver).move_to_element(driver.find_element(By.TAG_NAME, "h1")).perform()
        assert view.get_attribute("data-word") == expected.beams[0].words[k]  # pinned
        if os.environ.get("CAPTION_SCREENSHOT"):
            Path(os.environ["CAPTION_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
            assert driver.save_screenshot(os.environ["CAPTION_SCREENSHOT"])

        # a file dropped on the page that is not an image: the server's refusal is shown
        driver.execute_script(
            "const data = new DataTransfer();"
            "const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));"
            "data.items.add(new File([bytes], 'notes.png', {type: 'image/png'}));"
            "document.dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true}));",
            base64.b64encode(b"just some text").decode())
        error = driver.find_element(By.ID, "error")
        wait.until(lambda d: error.is_displayed())
        assert error.text.startswith("notes.png: not a recognised image")
    finally:
        driver.quit()
