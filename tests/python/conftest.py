"""Fixtures that start `rg-server` with the bundled tiny model on a free loopback port.

The server is the release binary (`cargo build --release --bin rg-server`); set
RG_SERVER_BIN to use another build. Each server's stderr is kept, and printed when a test
fails, so a failure shows what the server logged.
"""

import json
import os
import pathlib
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVER_BIN = pathlib.Path(os.environ.get("RG_SERVER_BIN", ROOT / "target/release/rg-server"))
MODEL = ROOT / "models/tiny-fortunes-q8_0.gguf"
MODEL_ID = "tiny-fortunes-q8_0"
API_KEY = "test-key-0123"

# Long enough for a loaded 2-core CI machine, short enough that a hung server fails the run.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


class Server:
    """One running rg-server process: its base URL, pid and stderr lines."""

    def __init__(self, extra_args):
        if not SERVER_BIN.is_file():
            pytest.fail(
                f"{SERVER_BIN} does not exist: build it with "
                "`cargo build --release --bin rg-server` (or set RG_SERVER_BIN)"
            )
        self.args = [str(SERVER_BIN), "-m", str(MODEL), "--host", "127.0.0.1", "--port", "0"]
        self.args += [str(a) for a in extra_args]
        self.lines = []
        self._listening = threading.Event()
        self.url = None
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        # The reader drains stderr for the server's whole life: a full pipe would block
        # the server's per-request log lines.
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self):
        return self.proc.pid

    @property
    def port(self):
        return int(self.url.rsplit(":", 1)[1])

    def _read_stderr(self):
        prefix = "rg-server listening on "
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.lines.append(line)
            if self.url is None and line.startswith(prefix):
                self.url = line[len(prefix):].strip()
                self._listening.set()
        self._listening.set()

    def _wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        if not self._listening.wait(START_TIMEOUT_S) or self.url is None:
            raise RuntimeError(f"rg-server did not start: {self.args}\n{self.log()}")
        # /health answers 503 while the model loads, 200 once it is in.
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rg-server exited with {self.proc.returncode}\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"rg-server /health never answered 200\n{self.log()}")

    def log(self):
        return "\n".join(self.lines[-200:])

    def stop(self):
        """SIGTERM, then SIGKILL if it has not exited in time. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode

    def post_json(self, path, body, api_key=None):
        """POSTs a JSON body to one of the non-OpenAI endpoints (/tokenize, ...). Returns
        (status, parsed JSON)."""
        headers = {"Content-Type": "application/json"}
        if api_key is not None:
            headers["Authorization"] = f"Bearer {api_key}"
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def metrics(self):
        """GET /metrics as {name: value} (unlabelled samples only)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as r:
            text = r.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.split()
                values[name] = float(value)
        return values

    def tokenize(self, text, add_special=True):
        status, body = self.post_json("/tokenize", {"content": text, "add_special": add_special})
        assert status == 200, body
        return body["tokens"]

    def client(self, api_key="unused", **kwargs):
        """An `openai.OpenAI` client for this server. No retries: every failure shows."""
        import openai

        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 60.0)
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, **kwargs)


# One server for the whole session. 8 slots (fewer than the 16 concurrent clients of the
# concurrency test, so that requests also wait for slots and join a running batch); 2
# threads, the CI machine's cores.
DEFAULT_ARGS = ["-np", "8", "-t", "2"]


@pytest.fixture(scope="session")
def server():
    s = Server(DEFAULT_ARGS)
    yield s
    status = s.stop()
    # SIGTERM must end the server cleanly (exit status 0).
    assert status == 0, f"rg-server exited with {status} after SIGTERM\n{s.log()}"


@pytest.fixture(scope="session")
def client(server):
    return server.client()


@pytest.fixture
def start_server():
    """Starts extra servers with other flags; stops them after the test."""
    started = []

    def start(*extra_args):
        s = Server(list(extra_args))
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Adds the server's last log lines to a failed test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        s = item.funcargs.get("server") if hasattr(item, "funcargs") else None
        if isinstance(s, Server):
            report.sections.append(("rg-server stderr", s.log()))
