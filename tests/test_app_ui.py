"""The real app, launched as `python app.py --demo` on 127.0.0.1, driven through gradio_client and
through the page in headless Chromium (Debian's chromium + chromium-driver, via selenium)."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT

ARTIFACTS = Path(ROOT) / "tests" / "artifacts"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                  "--window-size=1280,1600")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--demo"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"the app did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def read_mp4(path):
    import imageio.v2 as imageio

    with imageio.get_reader(path, format="ffmpeg") as reader:
        return reader.count_frames(), reader.get_data(0).shape


def test_generate_through_gradio_client(app_url, tmp_path):
    from gradio_client import Client, handle_file
    from PIL import Image

    client = Client(app_url, verbose=False)
    common = dict(model="tiny", preset="auto", dit="preset", t5="preset", clip="preset", negative="",
                  guidance=1.0, shift="5", seed=3, random_seed=False)
    video, _table, stats, status, _seed, _preview = client.predict(**common, task_label="Text to video", image=None, prompt="a red kite",
                                          width=48, height=32, frames=9, steps=2, api_name="/generate")
    assert read_mp4(video) == (9, (32, 48, 3))
    assert len(stats["per_step_s"]) == 2 and "transformer" in stats["kernels"] and "Done:** 9 frames" in status
    Image.new("RGB", (64, 64), "green").save(tmp_path / "in.png")
    video, _table, stats, _status, _seed, _preview = client.predict(**common, task_label="Image to video", image=handle_file(str(tmp_path / "in.png")),
                                     prompt="grass waving", width=32, height=32, frames=5, steps=2,
                                     api_name="/generate")
    assert read_mp4(video)[0] == 5 and "image_encoder" in stats["kernels"]


def test_bad_input_is_a_readable_error(app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    with pytest.raises(Exception, match=r"not 4k\+1"):
        client.predict(model="tiny", preset="auto", dit="preset", t5="preset", clip="preset",
                       task_label="Text to video", image=None, prompt="x", negative="", width=32, height=32,
                       frames=8, steps=2, guidance=1.0, shift="5", seed=1, random_seed=False, api_name="/generate")
    assert client.predict(api_name="/stop") == "Nothing of yours is running."


def test_a_server_path_in_the_request_is_refused(app_url, tmp_path):
    """A raw API call naming a file on the server (not uploaded) must not be read."""
    import json
    import urllib.request

    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "private.png")
    image = {"path": str(tmp_path / "private.png"), "meta": {"_type": "gradio.FileData"}}
    data = ["tiny", "auto", "preset", "preset", "preset", "Image to video", image, "x", "", 32, 32, 5, 1, 1.0, "5", 1,
            False, "preset", "preset", False]  # ..., random seed, self-attention, decoder, live preview
    post = urllib.request.Request(app_url + "gradio_api/call/generate", json.dumps({"data": data}).encode(),
                                  headers={"Content-Type": "application/json"})
    event = json.loads(urllib.request.urlopen(post, timeout=30).read())["event_id"]
    answer = urllib.request.urlopen(f"{app_url}gradio_api/call/generate/{event}", timeout=60).read().decode()
    assert "event: error" in answer and "not uploaded by a user" in answer and "complete" not in answer


def chromium_driver():
    """Selenium and the browser are looked up first, so a machine without them skips with a reason."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("Debian's chromium and chromium-driver are not installed (tests/run.sh installs them with "
                    "apt-get when it runs as root)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -r requirements-dev.txt)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def set_field(browser, css, text):
    from selenium.webdriver.common.keys import Keys

    box = browser.find_element("css selector", css)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    if text:
        box.send_keys(text)
    box.send_keys(Keys.TAB)  # Gradio reads the field when it loses focus


def status_text(browser):
    return browser.find_element("id", "status").text


def screenshot(browser, name):
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / name
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


@pytest.mark.slow
def test_page_in_headless_chromium(app_url):
    """Errors stay in the status line (20 s later too), an empty Shift box means the scheduler's own shift,
    an emptied Number field arrives as 0 and is named, a run shows the statistics table, and a run with
    the live preview on shows its picture."""
    browser = chromium_driver()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        browser.get(app_url)
        wait = WebDriverWait(browser, 120)
        prompt = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#prompt textarea")))
        assert "no CUDA GPU" in browser.find_element(By.ID, "hardware").text
        prompt.send_keys("a lighthouse in a storm")
        # An emptied Number field: Gradio 6's page sends null (measured here); the error names the field.
        set_field(browser, "#steps input", "")
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda b: "Error" in status_text(b))
        assert "steps is empty: give a number from 1 to 8" in status_text(browser)
        set_field(browser, "#steps input", "2")
        # A bad frame count: the sentence stays in the status line, not only in a fading toast.
        set_field(browser, "#frames input", "8")
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda b: "not 4k+1" in status_text(b))
        time.sleep(20)  # Gradio's toast has faded by now
        assert "Error" not in browser.find_element(By.ID, "video").text  # no bare badge: the sentence is below
        assert "frame count 8 is not 4k+1" in status_text(browser)
        screenshot(browser, "app-error-after-20s.png")
        # Fixed, with the Shift box emptied (= the scheduler's own shift): a video and the statistics table.
        set_field(browser, "#frames input", "9")
        set_field(browser, "#shift textarea, #shift input", "")
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda b: "Done:" in status_text(b))
        video = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#video video")))
        assert video.get_attribute("src")
        table_box = browser.find_element(By.ID, "stats-table")
        browser.execute_script("arguments[0].scrollIntoView()", table_box)
        table = table_box.text
        assert "Time per step" in table and "Model load" in table and "int8" in table
        screenshot(browser, "app-chromium.png")
        # Live preview on: the picture box shows the last step's latents beside the video.
        box = browser.find_element(By.CSS_SELECTOR, "#live-preview input[type=checkbox]")
        assert box.is_enabled() and "own (tiny) VAE" in browser.find_element(By.ID, "live-preview").text
        box.click()
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda b: "Done:" in status_text(b) and b.find_elements(By.CSS_SELECTOR, "#preview img"))
        assert browser.find_element(By.CSS_SELECTOR, "#preview img").get_attribute("src")
        screenshot(browser, "app-live-preview.png")
    finally:
        browser.quit()
