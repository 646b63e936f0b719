"""The chat page of `GET /` in a real headless browser: Debian's chromium driven through
chromium-driver by Selenium. Types a message, sends it, watches the answer stream in, and
saves a screenshot to target/screenshots/chat.png.

Skips only when chromium or chromedriver is missing outside CI; in CI (.ci/run sets RG_CI,
hosted runners set CI) .ci/run installs them, so a missing browser fails.
"""

import os
import shutil
import tempfile
import time

import pytest

from conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/lib/chromium/chromedriver" if os.path.exists("/usr/lib/chromium/chromedriver") else None
)
IN_CI = bool(os.environ.get("RG_CI") or os.environ.get("CI"))
SCREENSHOT = ROOT / "target/screenshots/chat.png"
MESSAGE = "Tell me my fortune, please."
# Short answers, so that the screenshot shows the whole conversation.
MAX_TOKENS = 64

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

# Records the answer being written (the page's last .msg.assistant) at every change of the
# message list, with its time, so that the test can tell an answer that grows piece by piece
# from one that appears at once.
WATCH_JS = """
window.__rgAnswer = [];
const note = () => {
  const all = document.querySelectorAll('#messages .msg.assistant');
  const last = all[all.length - 1];
  if (last) window.__rgAnswer.push([performance.now(), last.textContent.length, last.dataset.state]);
};
new MutationObserver(note).observe(document.getElementById('messages'),
    {childList: true, subtree: true, characterData: true, attributes: true});
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


def messages(driver, kind):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, f"#messages .msg.{kind}")


def send_and_wait(driver, text):
    """Types `text`, clicks Send, waits until the answer is complete; returns the samples
    (time, answer length, state) seen while it was written."""
    from selenium.webdriver.common.by import By

    driver.execute_script("window.__rgAnswer = [];")
    box = driver.find_element(By.ID, "input")
    assert box.is_displayed() and box.is_enabled()
    box.send_keys(text)
    driver.find_element(By.ID, "send").click()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answers = messages(driver, "assistant")
        if answers and answers[-1].get_attribute("data-state") not in (None, "", "streaming"):
            break
        time.sleep(0.05)
    else:
        save_screenshot(driver)
        pytest.fail(f"no complete answer within 60 s; page: {driver.find_element(By.TAG_NAME, 'body').text!r}")
    return driver.execute_script("return window.__rgAnswer")


def completion_tokens_logged(server, since, timeout=5.0):
    """out=N of the first chat completion the server logged after line `since` (a stream's
    line is written when its body ends, just after the page has seen it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.lines[since:]:
            if "POST /v1/chat/completions 200" in line and " out=" in line:
                return int(line.split(" out=")[1].split()[0])
        time.sleep(0.05)
    pytest.fail(f"the server logged no chat completion: {server.lines[since:]}")


def save_screenshot(driver):
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOT)), f"cannot write {SCREENSHOT}"


def test_chat_page_streams_an_answer(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    assert browser.title, "the chat page has no <title>"
    browser.execute_script(WATCH_JS)
    max_tokens = browser.find_element(By.ID, "max-tokens")
    max_tokens.clear()
    max_tokens.send_keys(str(MAX_TOKENS))
    logged = len(server.lines)

    samples = send_and_wait(browser, MESSAGE)
    answer = messages(browser, "assistant")[-1]
    assert answer.get_attribute("data-state") == "done", (
        answer.get_attribute("data-state"),
        [e.text for e in messages(browser, "error")],
    )
    assert [m.text for m in messages(browser, "user")] == [MESSAGE]
    assert answer.text.strip(), "the answer is empty"
    assert not messages(browser, "error")

    # Streamed: while "streaming", the answer went through several lengths, growing.
    streaming = [n for _, n, state in samples if state == "streaming"]
    assert len(set(streaming)) >= 3, f"the answer did not grow piece by piece: {samples}"
    assert streaming == sorted(streaming), f"the answer shrank while streaming: {streaming}"
    assert browser.find_element(By.ID, "send").is_enabled()
    # The page sent its "max tokens" setting: the server's log line for the request.
    out = completion_tokens_logged(server, logged)
    assert 1 <= out <= MAX_TOKENS, out

    # A second turn continues the conversation (the page sends the history).
    send_and_wait(browser, "And another one?")
    assert [m.get_attribute("data-state") for m in messages(browser, "assistant")] == ["done", "done"]
    assert len(messages(browser, "user")) == 2
    assert messages(browser, "assistant")[-1].text.strip()
    save_screenshot(browser)

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
