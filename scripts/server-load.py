#!/usr/bin/env python3
"""A bounded load / soak test for rg-server (or any OpenAI-compatible server) on this
machine: N concurrent clients send chat requests for D seconds, mixed streaming and not,
with random short prompts, lengths and sampling settings; then a report, and a non-zero exit
on any failed request or on RSS growth beyond a budget.

    scripts/server-load.py --port 8080                     # 64 clients, 120 s
    scripts/server-load.py --port 8080 -c 16 -d 20 --rss-budget-mib 32

What counts:
- a failure: any answer other than a well-formed 200 (connection errors, 4xx, 5xx, a stream
  without `data: [DONE]` or with an error event, a body that is not the OpenAI schema);
- a 503 (the server's backpressure: its queue is full) is not a failure: the client waits for
  Retry-After and sends the same request again; 503s are counted on their own line;
- RSS (VmRSS of the server process, by --pid or found from the listening port): read after a
  warm-up at full load ("before") and after the run once the server is idle ("after"); the
  growth must stay within --rss-budget-mib (default: the server's prompt-cache budget from
  /metrics plus 64 MiB, since the cache may fill during the run).

Loopback only (127.0.0.1, localhost, ::1). Standard library only.
"""

import argparse
import json
import random
import sys
import threading
import time

import server_http as sh

WORDS = (
    "luck love money sea travel friend work cat rain music dream moon bread time book winter "
    "fortune future wise old new happy strange small great river mountain letter stranger "
    "tomorrow yesterday door window garden road star fire gold silver quiet loud song journey"
).split()

SYSTEMS = ("Be brief.", "You are a fortune teller.", "Answer in one sentence.")


def random_chat(rng, max_tokens_cap):
    """One random chat request body (without `stream`)."""
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
    messages = []
    if rng.random() < 0.2:
        messages.append({"role": "system", "content": rng.choice(SYSTEMS)})
    if rng.random() < 0.2:
        # An earlier turn: exercises the prompt cache's answer snapshots.
        messages.append({"role": "user", "content": "Tell me my fortune."})
        messages.append({"role": "assistant", "content": "A " + rng.choice(WORDS) + " awaits."})
    messages.append({"role": "user", "content": f"A fortune about {words}."})
    body = {
        "model": "default",
        "messages": messages,
        "max_tokens": rng.randint(1, max_tokens_cap),
        "temperature": rng.choice((0.0, 0.7, 1.0)),
    }
    if rng.random() < 0.5:
        body["seed"] = rng.randrange(1 << 31)
    if rng.random() < 0.2:
        body["top_p"] = 0.9
    return body


class Tally:
    """One client's counts; merged at the end."""

    def __init__(self):
        self.ok = 0
        self.streamed = 0
        self.busy = 0
        self.failures = []  # (status, reason)
        self.latencies = []
        self.first_token = []
        self.tokens = 0


def check_answer(answer, body, stream):
    """None if the answer is a well-formed 200, else why not. Also returns the number of
    generated tokens (usage when given, else stream events with text)."""
    if answer.error:
        return answer.error, 0
    if answer.status != 200:
        message = answer.body
        if isinstance(message, dict) and isinstance(message.get("error"), dict):
            message = message["error"].get("message")
        return f"HTTP {answer.status}: {message}", 0
    if not stream:
        b = answer.body
        try:
            choice = b["choices"][0]
            content = choice["message"]["content"]
            usage = b["usage"]
        except (KeyError, IndexError, TypeError):
            return f"not a chat.completion: {json.dumps(b)[:200]}", 0
        if not isinstance(content, str):
            return "message.content is not a string", 0
        if choice.get("finish_reason") not in ("stop", "length"):
            return f"finish_reason {choice.get('finish_reason')!r}", 0
        if usage["completion_tokens"] > body["max_tokens"]:
            return f"{usage['completion_tokens']} tokens for max_tokens {body['max_tokens']}", 0
        return None, usage["completion_tokens"]
    if not answer.done:
        return "stream ended without data: [DONE]", 0
    for event in answer.events:
        if "error" in event:
            return f"error event in the stream: {event['error']}", 0
    finishes = [
        c.get("finish_reason")
        for e in answer.events
        for c in e.get("choices") or []
        if c.get("finish_reason")
    ]
    if len(finishes) != 1 or finishes[0] not in ("stop", "length"):
        return f"stream finish reasons {finishes}", 0
    usage = answer.events[-1].get("usage") if answer.events else None
    if body.get("stream_options", {}).get("include_usage"):
        if not usage:
            return "include_usage asked, no usage in the last chunk", 0
        return None, usage["completion_tokens"]
    return None, sum(1 for e in answer.events if sh.event_text(e))


def client_loop(endpoint, seed, args, deadline, stop, tally):
    rng = random.Random(seed)
    while not stop.is_set() and time.monotonic() < deadline:
        body = random_chat(rng, args.max_tokens)
        stream = rng.random() < args.stream_fraction
        if stream:
            body["stream"] = True
            if rng.random() < 0.5:
                body["stream_options"] = {"include_usage": True}
        first_sent = time.perf_counter()
        while True:
            answer = sh.post(endpoint, "/v1/chat/completions", body, stream)
            if answer.status != 503:
                break
            tally.busy += 1
            try:
                wait = float(answer.headers.get("retry-after", "1"))
            except ValueError:
                wait = 1.0
            remaining = deadline - time.monotonic()
            if remaining <= 0 or stop.is_set():
                return
            time.sleep(min(max(wait, 0.05), remaining))
        reason, tokens = check_answer(answer, body, stream)
        if reason:
            tally.failures.append((answer.status, reason))
            continue
        tally.ok += 1
        tally.streamed += stream
        tally.tokens += tokens
        # What the client waited, 503 retries included.
        tally.latencies.append(time.perf_counter() - first_sent)
        if stream:
            times = [t for t, e in zip(answer.event_times, answer.events) if sh.event_text(e)]
            if times:
                tally.first_token.append(times[0])


def run_load(endpoint, args, seconds, seed_base, pid, label):
    """`args.clients` clients for `seconds`; returns (tallies, wall seconds, RSS samples as
    (seconds, KiB))."""
    stop = threading.Event()
    deadline = time.monotonic() + seconds
    tallies = [Tally() for _ in range(args.clients)]
    threads = [
        threading.Thread(
            target=client_loop,
            args=(endpoint, seed_base + i, args, deadline, stop, tallies[i]),
            daemon=True,
        )
        for i in range(args.clients)
    ]
    start = time.monotonic()
    for t in threads:
        t.start()
    samples = []
    next_report = start + args.progress
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
            if pid:
                try:
                    samples.append((time.monotonic() - start, sh.rss_kib(pid)[0] or 0))
                except OSError:
                    pass
            if args.progress and time.monotonic() >= next_report:
                next_report += args.progress
                ok = sum(t.ok for t in tallies)
                failed = sum(len(t.failures) for t in tallies)
                busy = sum(t.busy for t in tallies)
                rss = f", RSS {samples[-1][1] / 1024:.1f} MiB" if samples else ""
                print(
                    f"  {label} {time.monotonic() - start:5.0f} s: {ok} ok, {failed} failed, "
                    f"{busy} x 503{rss}",
                    file=sys.stderr,
                    flush=True,
                )
    except KeyboardInterrupt:
        stop.set()
        print("interrupted: waiting for the requests in flight", file=sys.stderr)
        for t in threads:
            t.join()
    # Requests still in flight at the deadline finish (bounded by --request-timeout).
    for t in threads:
        t.join()
    return tallies, time.monotonic() - start, samples


def wait_idle(endpoint, timeout=60.0):
    """Waits until the server reports no busy slot and no queue (rg-server's /metrics or
    /health); returns False when it does not within `timeout`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = endpoint.metrics()
        if "rgemma_slots_busy" in m:
            if m["rgemma_slots_busy"] == 0 and m.get("rgemma_queue_length", 0) == 0:
                return True
        else:
            try:
                status, text = endpoint.get("/health")
                h = json.loads(text) if status == 200 else {}
            except (OSError, ValueError):
                h = {}
            if h.get("slots_processing", 0) == 0 and status == 200:
                return True
        time.sleep(0.2)
    return False


def mib(kib):
    return None if kib is None else kib / 1024.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", help="loopback only (default 127.0.0.1)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, help="server process (default: found from --port)")
    ap.add_argument("--api-key", help="sent as Authorization: Bearer KEY")
    ap.add_argument("-c", "--clients", type=int, default=64, help="concurrent clients (64)")
    ap.add_argument("-d", "--duration", type=float, default=120.0, help="seconds of load (120)")
    ap.add_argument("--warmup", type=float, default=5.0,
                    help="seconds of load before RSS 'before' is read (5; its requests count too)")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens drawn from 1..N (64)")
    ap.add_argument("--stream-fraction", type=float, default=0.5, help="share of streamed requests")
    ap.add_argument("--rss-budget-mib", type=float,
                    help="allowed RSS growth (default: the server's cache budget + 64 MiB)")
    ap.add_argument("--request-timeout", type=float, default=300.0, help="per request, seconds")
    ap.add_argument("--seed", type=int, default=1, help="random prompts and settings")
    ap.add_argument("--progress", type=float, default=10.0, help="seconds between progress lines (0: none)")
    ap.add_argument("--json-out", help="write the report as JSON here too")
    args = ap.parse_args()
    if args.clients < 1 or args.duration <= 0 or args.max_tokens < 1:
        ap.error("--clients, --duration and --max-tokens must be positive")
    if not 0.0 <= args.stream_fraction <= 1.0:
        ap.error("--stream-fraction must be between 0 and 1")

    endpoint = sh.Endpoint(args.host, args.port, args.api_key, timeout=args.request_timeout)
    try:
        status, text = endpoint.get("/health")
    except OSError as e:
        sys.exit(f"error: no server at {args.host}:{args.port}: {e}")
    if status != 200:
        sys.exit(f"error: {args.host}:{args.port}/health answers {status}: {text[:200]}")
    pid = args.pid or sh.pid_listening_on(args.port)
    if pid is None:
        print("warning: cannot find the server's pid (give --pid): no RSS check", file=sys.stderr)
    metrics = endpoint.metrics()
    cache_limit = metrics.get("rgemma_cache_limit_bytes")
    if args.rss_budget_mib is not None:
        budget_mib, budget_why = args.rss_budget_mib, "--rss-budget-mib"
    elif cache_limit is not None:
        budget_mib = cache_limit / (1 << 20) + 64
        budget_why = f"cache budget {cache_limit / (1 << 20):.0f} MiB + 64 MiB"
    else:
        budget_mib, budget_why = 64.0, "64 MiB (no cache budget in /metrics)"

    rss_fresh = sh.rss_kib(pid)[0] if pid else None
    print(
        f"server-load: {args.clients} clients, {args.warmup:g} s warm-up + {args.duration:g} s, "
        f"{args.host}:{args.port}" + (f" (pid {pid})" if pid else ""),
        file=sys.stderr,
    )
    tallies = []
    if args.warmup > 0:
        warm, _, _ = run_load(endpoint, args, args.warmup, args.seed * 1_000_003, pid, "warm-up")
        tallies += warm
    idle_before = wait_idle(endpoint)
    rss_before = sh.rss_kib(pid)[0] if pid else None
    cache_before = endpoint.metrics().get("rgemma_cache_bytes")

    main_tallies, wall, samples = run_load(endpoint, args, args.duration, args.seed * 7_919, pid, "load")
    peak = max((kib for _, kib in samples), default=0)
    # RSS at each quarter of the run: a leak climbs steadily, a cache or allocator settles.
    quarters = []
    for q in (0.25, 0.5, 0.75, 1.0):
        before_q = [kib for t, kib in samples if t <= q * wall]
        quarters.append(before_q[-1] / 1024.0 if before_q else None)
    tallies_run = main_tallies
    tallies += main_tallies
    idle_after = wait_idle(endpoint)
    time.sleep(1.0)
    rss_after, hwm = sh.rss_kib(pid) if pid else (None, None)
    cache_after = endpoint.metrics().get("rgemma_cache_bytes")
    try:
        health_after = endpoint.get("/health")[0]
    except OSError:
        health_after = None

    def total(attr, ts):
        return sum(getattr(t, attr) for t in ts)

    failures = [f for t in tallies for f in t.failures]
    latencies = [x for t in tallies_run for x in t.latencies]
    first = [x for t in tallies_run for x in t.first_token]
    tokens_run = total("tokens", tallies_run)
    report = {
        "clients": args.clients,
        "duration_s": round(wall, 2),
        "requests_ok": total("ok", tallies),
        "requests_ok_streamed": total("streamed", tallies),
        "requests_failed": len(failures),
        "busy_503_retried": total("busy", tallies),
        "tokens_generated_run": tokens_run,
        "tokens_per_s": round(tokens_run / wall, 1) if wall > 0 else None,
        "requests_per_s": round(total("ok", tallies_run) / wall, 2) if wall > 0 else None,
        "latency_p50_s": sh.percentile(latencies, 50),
        "latency_p95_s": sh.percentile(latencies, 95),
        "first_token_p50_s": sh.percentile(first, 50),
        "first_token_p95_s": sh.percentile(first, 95),
        "rss_fresh_mib": mib(rss_fresh),
        "rss_before_mib": mib(rss_before),
        "rss_peak_mib": mib(max(peak, rss_after or 0)) if pid else None,
        "rss_after_mib": mib(rss_after),
        "rss_quarters_mib": quarters,
        "rss_hwm_mib": mib(hwm),
        "rss_budget_mib": budget_mib,
        "cache_before_mib": None if cache_before is None else cache_before / (1 << 20),
        "cache_after_mib": None if cache_after is None else cache_after / (1 << 20),
        "idle_after": idle_after,
        "health_after": health_after,
    }
    growth = None if rss_before is None or rss_after is None else (rss_after - rss_before) / 1024.0
    report["rss_growth_mib"] = growth

    problems = []
    if failures:
        problems.append(f"{len(failures)} failed requests")
    if report["requests_ok"] == 0:
        problems.append("no request succeeded")
    if growth is not None and growth > budget_mib:
        problems.append(f"RSS grew {growth:.1f} MiB, more than the budget of {budget_mib:.0f} MiB")
    if health_after != 200:
        problems.append(f"/health answers {health_after} after the run")
    if not (idle_before and idle_after):
        problems.append("the server did not become idle after the load (slots or queue stuck)")
    report["result"] = "FAIL: " + "; ".join(problems) if problems else "PASS"

    def fmt(x, unit="s"):
        return "n/a" if x is None else f"{x:.3f} {unit}"

    def fmt_mib(x):
        return "n/a" if x is None else f"{x:.1f}"

    print(f"clients                 {args.clients} for {wall:.1f} s (after {args.warmup:g} s warm-up)")
    print(f"requests ok             {report['requests_ok']} ({report['requests_ok_streamed']} streamed; "
          "warm-up included)")
    print(f"requests failed         {report['requests_failed']}")
    print(f"503 busy (retried)      {report['busy_503_retried']}")
    print(f"run throughput          {report['tokens_per_s']} tokens/s, {report['requests_per_s']} requests/s "
          f"({tokens_run} tokens)")
    print(f"latency p50 / p95       {fmt(report['latency_p50_s'])} / {fmt(report['latency_p95_s'])} (run, 503 waits included)")
    print(f"first token p50 / p95   {fmt(report['first_token_p50_s'])} / {fmt(report['first_token_p95_s'])} (streams)")
    print(f"RSS MiB fresh / before / peak / after   {fmt_mib(report['rss_fresh_mib'])} / "
          f"{fmt_mib(report['rss_before_mib'])} / {fmt_mib(report['rss_peak_mib'])} / "
          f"{fmt_mib(report['rss_after_mib'])}")
    print("RSS MiB at 1/4 .. 4/4 of the run     " + " / ".join(fmt_mib(q) for q in quarters))
    print(f"RSS growth              {fmt_mib(growth)} MiB (budget {budget_mib:.0f} MiB: {budget_why})")
    if cache_before is not None and cache_after is not None:
        print(f"prompt cache MiB        {fmt_mib(report['cache_before_mib'])} before, "
              f"{fmt_mib(report['cache_after_mib'])} after (rgemma_cache_bytes)")
    if failures:
        kinds = {}
        for status, reason in failures:
            kinds.setdefault(reason[:160], 0)
            kinds[reason[:160]] += 1
        print("failures:")
        for reason, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:10]:
            print(f"  {n:6d} x {reason}")
    print(f"result                  {report['result']}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
