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
# Long answers (and a few tries) to see one grow.
STREAM_TOKENS = 256
STREAM_TRIES = 3

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
  if (last) {
    window.__rgAnswer.push([performance.now(), last.textContent.length, last.dataset.state]);
  }
};
new MutationObserver(note).observe(document.getElementById('messages'),
    {childList: true, subtree: true, characterData: true, attributes: true});
"""


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        missing = "chromium" if not CHROMIUM else "chromedriver"
        if IN_CI:
            pytest.fail(f"{missing} is missing in CI (.ci/run installs chromium, chromium-driver)")
        pytest.skip(
            f"{missing} not installed (apt-get install chromium chromium-driver); "
            "the chat page test needs a real browser"
        )
    from selenium.common.exceptions import WebDriverException

    # Selenium must not look for drivers online.
    os.environ.setdefault("SE_OFFLINE", "true")
    profiles = []
    try:
        try:
            driver = start_chromium(profiles)
        except WebDriverException as e:
            # A starved machine can miss chromedriver's start-up deadline: one more try.
            print(f"chromium did not start ({e.msg}); trying again")
            driver = start_chromium(profiles)
        driver.set_page_load_timeout(30)
        try:
            yield driver
        finally:
            driver.quit()
    finally:
        for profile in profiles:
            shutil.rmtree(profile, ignore_errors=True)


def start_chromium(profiles):
    """Headless chromium with a fresh profile (its directory appended to `profiles`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profiles.append(tempfile.mkdtemp(prefix="rg-chromium-"))
    options.add_argument(f"--user-data-dir={profiles[-1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


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
        page = driver.find_element(By.TAG_NAME, "body").text
        pytest.fail(f"no complete answer within 60 s; page: {page!r}")
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


def set_max_tokens(driver, n):
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "max-tokens")
    box.clear()
    box.send_keys(str(n))


def check_turns(driver, users):
    """The page shows `users` as the user turns, each answered, no error."""
    assert [m.text for m in messages(driver, "user")] == users
    answers = messages(driver, "assistant")
    states = [a.get_attribute("data-state") for a in answers]
    errors = [e.text for e in messages(driver, "error")]
    assert states == ["done"] * len(users), (states, errors)
    assert all(a.text.strip() for a in answers), "an answer is empty"
    assert not errors


def test_chat_page_streams_an_answer(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    assert browser.title, "the chat page has no <title>"
    browser.execute_script(WATCH_JS)

    # Streamed: while "streaming", the answer goes through several lengths, growing. The
    # tiny model writes a long answer in well under a second, so on a starved machine the
    # browser may get it all in one read: a few tries with long answers.
    set_max_tokens(browser, STREAM_TOKENS)
    tries = []
    for attempt in range(STREAM_TRIES):
        samples = send_and_wait(browser, MESSAGE)
        check_turns(browser, [MESSAGE] * (attempt + 1))
        streaming = [n for _, n, state in samples if state == "streaming"]
        assert streaming == sorted(streaming), f"the answer shrank while streaming: {streaming}"
        tries.append(len(set(streaming)))
        if tries[-1] >= 3:
            break
    assert tries[-1] >= 3, f"no answer grew piece by piece; lengths seen per try: {tries}"
    assert browser.find_element(By.ID, "send").is_enabled()

    # "New chat" clears the conversation; a short two-turn chat for the screenshot. The
    # page sends its "max tokens" setting (the server's log line says how many it made)
    # and the history (the second turn is answered in the same conversation).
    browser.find_element(By.ID, "new-chat").click()
    assert not browser.find_elements(By.CSS_SELECTOR, "#messages .msg")
    set_max_tokens(browser, MAX_TOKENS)
    logged = len(server.lines)
    send_and_wait(browser, MESSAGE)
    out = completion_tokens_logged(server, logged)
    assert 1 <= out <= MAX_TOKENS, out
    send_and_wait(browser, "And another one?")
    check_turns(browser, [MESSAGE, "And another one?"])
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
