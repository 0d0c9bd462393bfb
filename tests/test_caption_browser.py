"""caption.py's web page in a real headless browser: choose a picture, see its caption, its beams and,
hovering over a word, the heat map of where the model looked; a dropped non-image shows the error and
clears the previous result. A Show-and-Tell checkpoint (no attention) shows its caption as text, and a
retrieval checkpoint the nearest training captions with their similarities.

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
import contextlib
import io
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch
from test_caption import draw_image, make_tiny_checkpoint
from test_caption_serving import make_retrieval_checkpoint, make_show_and_tell_checkpoint

from captioner.evaluation.caption_bank import CaptionRetriever
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


@contextlib.contextmanager
def serving(captioner):
    """A server on a free port with this captioner (or retriever)."""
    server = CaptionServer(captioner, "127.0.0.1", 0, log=io.StringIO())
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture()
def page(tmp_path):
    """A server on a free port with the tiny test checkpoint (or $CAPTION_CHECKPOINT), and its captioner."""
    checkpoint = os.environ.get("CAPTION_CHECKPOINT") or make_tiny_checkpoint(tmp_path / "run")
    with serving(ImageCaptioner.from_checkpoint(checkpoint, torch.device("cpu"))) as server:
        yield server


@pytest.fixture()
def browser():
    """``(driver, wait)``: a headless Chromium and a WebDriverWait on it (skips without them)."""
    driver = chrome_or_skip()
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        yield driver, WebDriverWait(driver, WAIT_S)
    finally:
        driver.quit()


def choose(driver, wait, image: Path) -> None:
    """Choose ``image`` in the page's file picker and wait for its result."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "file").send_keys(str(image.resolve()))
    wait.until(lambda d: d.find_element(By.ID, "result").is_displayed()
               and image.name in d.find_element(By.ID, "status").text)


def test_the_page_captions_an_upload_and_shows_where_each_word_looked(page, browser, tmp_path):
    image = Path(os.environ.get("CAPTION_IMAGE") or draw_image(tmp_path / "red disc.png", (220, 30, 30)))
    expected = page.captioner.caption([page.captioner.load(image)], top=page.captioner.beam_size, attention=True)[0]
    driver, wait = browser
    from selenium.webdriver import ActionChains
    from selenium.webdriver.common.by import By

    driver.get(page.url)
    choose(driver, wait, image)
    assert driver.find_element(By.ID, "hint").is_displayed()  # there are words to hover over

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
    # the previous picture and its caption are gone: they must not pass for notes.png's
    assert not driver.find_element(By.ID, "result").is_displayed()
    assert driver.find_element(By.ID, "status").text == ""


def test_a_show_and_tell_caption_is_shown_as_text_and_long_words_wrap(browser, tmp_path):
    captioner = ImageCaptioner.from_checkpoint(make_show_and_tell_checkpoint(tmp_path / "run"), torch.device("cpu"))
    image = draw_image(tmp_path / "wide.png", (30, 200, 30), size=(90, 60))
    expected = captioner.caption([captioner.load(image)], top=captioner.beam_size)[0]
    driver, wait = browser
    from selenium.webdriver.common.by import By

    with serving(captioner) as server:
        driver.get(server.url)
        choose(driver, wait, image)
        assert driver.find_element(By.ID, "caption").text == expected.caption != ""
        assert not driver.find_elements(By.CSS_SELECTOR, "#caption .word")
        assert not driver.find_element(By.ID, "hint").is_displayed()  # nothing to hover over
        beams = driver.find_elements(By.CSS_SELECTOR, "#beams li")
        assert [li.text for li in beams] == [f"{h.score:.3f} {h.caption}".strip() for h in expected.beams]
        # the centre crop of a 90 x 60 picture kept the middle two thirds of its width
        assert "the centre square: 67 % of the picture's longer side" in driver.find_element(By.ID, "shown").text

        # a caption of one very long word wraps inside the page instead of widening it
        driver.execute_script("render({...answer, beams: [{caption: 'w'.repeat(400), score: -1, words: []}]});")
        assert driver.find_element(By.ID, "caption").text == "w" * 400
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def test_a_retrieval_checkpoint_shows_the_nearest_training_captions(browser, tmp_path):
    retriever = CaptionRetriever.from_checkpoint(make_retrieval_checkpoint(tmp_path / "run"), torch.device("cpu"),
                                                 show=False)
    image = draw_image(tmp_path / "photo.png", (220, 30, 30), size=(48, 48))
    expected = retriever.retrieve([retriever.load(image)], retriever.beam_size)[0]
    driver, wait = browser
    from selenium.webdriver.common.by import By

    with serving(retriever) as server:
        driver.get(server.url)
        assert "captions shown" in driver.find_element(By.ID, "drop").text
        choose(driver, wait, image)
        assert driver.find_element(By.ID, "caption").text == expected.caption
        assert not driver.find_element(By.ID, "hint").is_displayed()
        assert "nearest captions of the training set" in driver.find_element(By.ID, "listed").text
        beams = driver.find_elements(By.CSS_SELECTOR, "#beams li")
        assert [li.text for li in beams] == [f"{h.score:.3f} {h.caption}" for h in expected.beams]
        assert len(beams) == retriever.beam_size == 3
        assert driver.find_element(By.ID, "shown").text == "the image as the model saw it"  # square: nothing cut
        if os.environ.get("CAPTION_RETRIEVAL_SCREENSHOT"):
            assert driver.save_screenshot(os.environ["CAPTION_RETRIEVAL_SCREENSHOT"])
