"""The chat page of `GET /` in a real headless browser: Debian's chromium driven through
chromium-driver by Selenium. Types a message, sends it, watches the answer stream in, and
saves a screenshot to target/screenshots/chat.png.

Skips only when chromium or chromedriver is missing outside CI; in CI (.ci/run sets RG_CI,
hosted runners set CI) .ci/run installs them, so a missing browser fails.
"""

import json
import os
import shutil
import tempfile
import time
import urllib.request

import pytest

from conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/lib/chromium/chromedriver" if os.path.exists("/usr/lib/chromium/chromedriver") else None
)
IN_CI = bool(os.environ.get("RG_CI") or os.environ.get("CI"))
SCREENSHOT = ROOT / "target/screenshots/chat.png"
MESSAGE = "Tell me my fortune, please."

# The network is closed: nothing of chromium's may try to reach out (updates, sync, QUIC
# probes), and a fresh profile keeps runs independent.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
]

# Records every change of the page's text with its time, so that the test can tell an
# answer that grows piece by piece from one that appears at once.
WATCH_JS = """
window.__rgText = [];
const note = () => window.__rgText.push([performance.now(), document.body.innerText.length]);
note();
new MutationObserver(note).observe(document.body,
    {childList: true, subtree: true, characterData: true});
"""


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        missing = "chromium" if not CHROMIUM else "chromedriver"
        if IN_CI:
            pytest.fail(f"{missing} is missing in CI (.ci/run installs chromium and chromium-driver)")
        pytest.skip(
            f"{missing} not installed (apt-get install chromium chromium-driver); "
            "the chat page test needs a real browser"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Selenium must not look for drivers online.
    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="rg-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def health(server):
    with urllib.request.urlopen(server.url + "/health", timeout=10) as r:
        return json.loads(r.read())


def find_input(driver):
    """The message box: the visible textarea, else a visible text input."""
    from selenium.webdriver.common.by import By

    for selector in ("textarea", "input[type=text]", "input:not([type])", "[contenteditable=true]"):
        for element in driver.find_elements(By.CSS_SELECTOR, selector):
            if element.is_displayed() and element.is_enabled():
                return element
    pytest.fail("the chat page has no visible message box (textarea or text input)")


def find_send_button(driver):
    from selenium.webdriver.common.by import By

    for element in driver.find_elements(By.CSS_SELECTOR, "button, input[type=submit]"):
        label = (element.text or element.get_attribute("value") or "").strip().lower()
        kind = (element.get_attribute("type") or "").lower()
        if element.is_displayed() and ("send" in label or kind == "submit"):
            return element
    return None


def test_chat_page_streams_an_answer(browser, server):
    from selenium.webdriver.common.keys import Keys

    browser.get(server.url + "/")
    assert browser.title, "the chat page has no <title>"
    box = find_input(browser)
    browser.execute_script(WATCH_JS)
    start_length = len(browser.find_element("tag name", "body").text)

    box.send_keys(MESSAGE)
    button = find_send_button(browser)
    if button is not None:
        button.click()
    else:
        box.send_keys(Keys.ENTER)

    # The answer is complete when the server has no request running and the page text has
    # not changed for a while.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        samples = browser.execute_script("return window.__rgText")
        h = health(server)
        quiet_ms = browser.execute_script("return performance.now()") - samples[-1][0]
        grew = samples[-1][1] > start_length + len(MESSAGE)
        if grew and h.get("slots_processing", 0) == 0 and quiet_ms > 1000:
            break
        time.sleep(0.1)
    else:
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOT))
        pytest.fail(f"no complete answer within 60 s; page text: {browser.find_element('tag name', 'body').text!r}")

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))

    page_text = browser.find_element("tag name", "body").text
    assert MESSAGE in page_text, "the sent message is not shown"
    answer = page_text.split(MESSAGE, 1)[1].strip()
    assert answer, f"no answer shown after the message: {page_text!r}"

    # Streamed: the text grew through several lengths after the message appeared.
    samples = browser.execute_script("return window.__rgText")
    lengths = [n for _, n in samples]
    with_message = [n for n in lengths if n >= start_length + len(MESSAGE)]
    assert len(set(with_message)) >= 3, f"the answer did not grow piece by piece: {lengths}"

    # The page asked the chat endpoint, and the browser logged no errors.
    requested = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert any(u.endswith("/v1/chat/completions") for u in requested), requested
    # (A page without an icon link makes the browser ask for /favicon.ico: a 404, no fault.)
    errors = [
        e
        for e in browser.get_log("browser")
        if e.get("level") == "SEVERE" and "favicon.ico" not in e.get("message", "")
    ]
    assert not errors, errors
