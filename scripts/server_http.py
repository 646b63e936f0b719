"""What scripts/server-load.py and scripts/server-latency.py share: talking to an
OpenAI-compatible server on this machine (rg-server or llama.cpp's llama-server) over plain
HTTP, reading server-sent events as they arrive, and reading the server's RSS.

Standard library only, so the scripts run with any Python 3.9+, and only loopback
addresses: these are load tools, and a load tool pointed at another machine by mistake is a
denial of service.
"""

import http.client
import json
import os
import time

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def require_loopback(host):
    """Raises SystemExit unless `host` is a loopback name or address."""
    if host.strip("[]") not in LOOPBACK_HOSTS:
        raise SystemExit(
            f"error: refusing host {host!r}: only {', '.join(LOOPBACK_HOSTS)} (this is a load tool)"
        )
    return host.strip("[]")


class Endpoint:
    """A server at host:port, with an optional API key."""

    def __init__(self, host, port, api_key=None, timeout=600.0):
        self.host = require_loopback(host)
        self.port = port
        self.api_key = api_key
        self.timeout = timeout

    def connect(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def headers(self, body=True):
        h = {"Accept": "application/json, text/event-stream"}
        if body:
            h["Content-Type"] = "application/json"
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def get(self, path):
        """(status, body text) of GET path."""
        conn = self.connect()
        try:
            conn.request("GET", path, headers=self.headers(body=False))
            r = conn.getresponse()
            return r.status, r.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def get_json(self, path):
        status, text = self.get(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {text[:300]}")
        return json.loads(text)

    def metrics(self):
        """GET /metrics as {name: value} for unlabelled samples; {} when not served."""
        try:
            status, text = self.get("/metrics")
        except OSError:
            return {}
        if status != 200:
            return {}
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                parts = line.split()
                if len(parts) == 2:
                    try:
                        values[parts[0]] = float(parts[1])
                    except ValueError:
                        pass
        return values

    def n_vocab(self):
        """The vocabulary size from /v1/models (rg-server and llama-server both report it
        under data[0].meta.n_vocab)."""
        models = self.get_json("/v1/models")
        return int(models["data"][0]["meta"]["n_vocab"])


class Answer:
    """One request's outcome: status, headers, body (JSON, or the list of stream events) and
    times (seconds from the request's start)."""

    def __init__(self):
        self.status = None
        self.headers = {}
        self.body = None
        self.events = []
        self.event_times = []
        self.done = False  # a stream ended with `data: [DONE]`
        self.elapsed = None
        self.error = None  # why the request failed (connection, bad JSON, ...)


def post(endpoint, path, payload, stream):
    """POSTs `payload`; for a stream, reads the events as they arrive and stamps each one.
    Never raises for network or protocol trouble: that goes into Answer.error."""
    answer = Answer()
    body = json.dumps(payload).encode()
    conn = endpoint.connect()
    start = time.perf_counter()
    try:
        conn.request("POST", path, body=body, headers=endpoint.headers())
        r = conn.getresponse()
        answer.status = r.status
        answer.headers = {k.lower(): v for k, v in r.getheaders()}
        if r.status != 200 or not stream:
            raw = r.read()
            try:
                answer.body = json.loads(raw) if raw else None
            except ValueError:
                answer.error = f"body is not JSON: {raw[:200]!r}"
        else:
            read_events(r, answer, start)
    except (OSError, http.client.HTTPException) as e:
        answer.error = f"{type(e).__name__}: {e}"
    finally:
        answer.elapsed = time.perf_counter() - start
        conn.close()
    return answer


def read_events(response, answer, start):
    """Server-sent events: `data: ...` lines, one JSON object each, until `data: [DONE]`."""
    while True:
        line = response.readline()
        if not line:
            break
        now = time.perf_counter() - start
        line = line.strip()
        if not line.startswith(b"data:"):
            continue  # blank separators, comments, `event:` lines
        data = line[5:].strip()
        if data == b"[DONE]":
            answer.done = True
            break
        try:
            answer.events.append(json.loads(data))
        except ValueError:
            answer.error = f"stream event is not JSON: {data[:200]!r}"
            break
        answer.event_times.append(now)
    # Read to the end so that nothing is left unread (and a cut stream shows).
    if answer.done:
        response.read()


def event_text(event):
    """The text an event adds (chat delta or completion text), over all its choices."""
    text = ""
    for choice in event.get("choices") or []:
        delta = choice.get("delta")
        if delta is not None:
            text += delta.get("content") or ""
        else:
            text += choice.get("text") or ""
    return text


def percentile(values, q):
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# --- the server process --------------------------------------------------------------------


def rss_kib(pid):
    """(VmRSS, VmHWM) of a process in KiB, from /proc/PID/status."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values.get("VmRSS"), values.get("VmHWM")


def pid_listening_on(port):
    """The pid of the process with a listening TCP socket on `port`, or None: the socket's
    inode from /proc/net/tcp{,6}, then the process holding that inode among its fds."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{inode}]")
        except FileNotFoundError:
            continue
    if not inodes:
        return None
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            for fd in os.listdir(fd_dir):
                if os.readlink(f"{fd_dir}/{fd}") in inodes:
                    return int(pid)
        except OSError:
            continue
    return None
