#!/usr/bin/env python3
"""Serving speed of an OpenAI-compatible server on this machine (rg-server or llama.cpp's
llama-server): for each concurrency C, C clients send streamed `/v1/completions` requests
whose prompts are exactly P token ids, each asking for T tokens, and the script measures

- aggregate generated tokens/s: all generated tokens / wall time of the level (first request
  sent to last answer complete);
- time to first token (TTFT) p50/p95: request sent -> first streamed token;
- time between tokens (TBT) p50/p95/p99/max: gaps between consecutive streamed token chunks, over all
  requests (a chunk that carries several tokens, e.g. held back for UTF-8, is one gap; the
  `chunks/tok` column shows how often that happened).

    scripts/server-latency.py --port 8080 --clients 1,8,32 --prompt-tokens 512 --max-tokens 128
    scripts/server-latency.py --summary results.jsonl      # side-by-side table of saved runs

Prompts are random token ids (each request its own, so no server can reuse another's
prompt), drawn from ids >= 1000 (no control or byte tokens); `ignore_eos` asks llama-server
to run the full T tokens (rg-server ignores unknown fields). Sampling is greedy. Each level
runs max(C * --rounds, --min-requests) requests with C clients taking them in turn, so every
client has one request in flight at a time. Loopback only; standard library only.
"""

import argparse
import json
import random
import sys
import threading
import time

import server_http as sh


def token_events(answer):
    """(time, event) of the stream events that carry generated tokens: every event with a
    choice, except a closing one that only carries the finish reason."""
    out = []
    for t, e in zip(answer.event_times, answer.events):
        choices = e.get("choices") or []
        if not choices:
            continue  # the usage chunk
        if sh.event_text(e) == "" and any(c.get("finish_reason") for c in choices):
            continue
        out.append((t, e))
    return out


class Result:
    def __init__(self):
        self.ok = False
        self.reason = None
        self.sent = None  # seconds from the level's start
        self.done = None
        self.ttft = None
        self.gaps = []
        self.tokens = 0
        self.chunks = 0
        self.prompt_tokens = None


def one_request(endpoint, prompt, max_tokens, level_start, extra):
    r = Result()
    payload = {
        "model": "default",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    payload.update(extra)
    r.sent = time.perf_counter() - level_start
    while True:
        answer = sh.post(endpoint, "/v1/completions", payload, stream=True)
        if answer.status != 503:
            break
        # The server's queue is full: wait as told, then again (counted as a failure only if
        # it never answers).
        try:
            time.sleep(float(answer.headers.get("retry-after", "1")))
        except ValueError:
            time.sleep(1.0)
    r.done = time.perf_counter() - level_start
    if answer.error:
        r.reason = answer.error
    elif answer.status != 200:
        r.reason = f"HTTP {answer.status}: {json.dumps(answer.body)[:300]}"
    elif not answer.done:
        r.reason = "stream ended without data: [DONE]"
    if r.reason:
        return r
    for e in answer.events:
        if "error" in e:
            r.reason = f"error event: {e['error']}"
            return r
    events = token_events(answer)
    if not events:
        r.reason = "no tokens streamed"
        return r
    times = [t for t, _ in events]
    r.ttft = times[0]
    r.gaps = [b - a for a, b in zip(times, times[1:])]
    r.chunks = len(events)
    usage = next((e["usage"] for e in reversed(answer.events) if e.get("usage")), None)
    if usage:
        r.tokens = usage.get("completion_tokens", r.chunks)
        r.prompt_tokens = usage.get("prompt_tokens")
    else:
        r.tokens = r.chunks
    r.ok = True
    return r


def run_level(endpoint, clients, n_requests, prompts, max_tokens, extra):
    results = [None] * n_requests
    next_index = [0]
    lock = threading.Lock()
    start = time.perf_counter()

    def worker():
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= n_requests:
                return
            results[i] = one_request(endpoint, prompts[i], max_tokens, start, extra)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - start


def summarize(label, clients, prompt_len, max_tokens, results, wall):
    ok = [r for r in results if r.ok]
    gaps = [g for r in ok for g in r.gaps]
    tokens = sum(r.tokens for r in ok)
    chunks = sum(r.chunks for r in ok)
    prompt_counts = sorted({r.prompt_tokens for r in ok if r.prompt_tokens is not None})
    return {
        "server": label,
        "clients": clients,
        "requests": len(results),
        "failed": len(results) - len(ok),
        "failures": sorted({r.reason for r in results if not r.ok})[:5],
        "prompt_ids": prompt_len,
        "prompt_tokens_reported": prompt_counts,
        "max_tokens": max_tokens,
        "tokens_generated": tokens,
        "wall_s": round(wall, 3),
        "gen_tokens_per_s": round(tokens / wall, 2) if wall > 0 else None,
        "ttft_p50_s": sh.percentile([r.ttft for r in ok], 50),
        "ttft_p95_s": sh.percentile([r.ttft for r in ok], 95),
        "tbt_p50_s": sh.percentile(gaps, 50),
        "tbt_p95_s": sh.percentile(gaps, 95),
        "tbt_p99_s": sh.percentile(gaps, 99),
        "tbt_max_s": max(gaps) if gaps else None,
        "chunks_per_token": round(chunks / tokens, 3) if tokens else None,
    }


HEADER = (
    f"{'server':<14} {'C':>3} {'reqs':>4} {'fail':>4} {'prompt':>6} {'gen':>5} {'wall s':>8} "
    f"{'gen tok/s':>9} {'TTFT p50':>9} {'TTFT p95':>9} {'TBT p50':>8} {'TBT p95':>8} "
    f"{'TBT p99':>8} {'TBT max':>8} {'chunks/tok':>10}"
)


def row(s):
    def ms(x):
        return "n/a" if x is None else f"{x * 1000:.1f}ms"

    prompt = s["prompt_tokens_reported"]
    prompt = str(prompt[0]) if len(prompt) == 1 else str(s["prompt_ids"])
    return (
        f"{s['server']:<14} {s['clients']:>3} {s['requests']:>4} {s['failed']:>4} {prompt:>6} "
        f"{s['tokens_generated']:>5} {s['wall_s']:>8.2f} {s['gen_tokens_per_s'] or 0:>9.2f} "
        f"{ms(s['ttft_p50_s']):>9} {ms(s['ttft_p95_s']):>9} {ms(s['tbt_p50_s']):>8} "
        f"{ms(s['tbt_p95_s']):>8} {ms(s.get('tbt_p99_s')):>8} {ms(s.get('tbt_max_s')):>8} "
        f"{s['chunks_per_token'] or 0:>10.3f}"
    )


def print_summary(path):
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    rows.sort(key=lambda s: (s["prompt_ids"], s["max_tokens"], s["clients"], s["server"]))
    print(HEADER)
    for s in rows:
        print(row(s))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--summary", metavar="JSONL", help="print the table of a saved --jsonl-out and exit")
    ap.add_argument("--host", default="127.0.0.1", help="loopback only (default 127.0.0.1)")
    ap.add_argument("--port", type=int)
    ap.add_argument("--api-key")
    ap.add_argument("--label", default="server", help="the server's name in the table and JSON")
    ap.add_argument("--clients", default="1,8,32", help="concurrency levels, comma-separated (1,8,32)")
    ap.add_argument("--prompt-tokens", type=int, default=512, help="prompt length in token ids (512)")
    ap.add_argument("--max-tokens", type=int, default=128, help="tokens per answer (128)")
    ap.add_argument("--rounds", type=int, default=1, help="requests per client per level (1)")
    ap.add_argument("--min-requests", type=int, default=4, help="fewest requests per level (4)")
    ap.add_argument("--n-vocab", type=int, help="vocabulary size (default: from /v1/models)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the warm-up (max(C) short requests at once)")
    ap.add_argument("--extra", default="{}", help="JSON object merged into every request body")
    ap.add_argument("--jsonl-out", help="append one JSON line per level here")
    ap.add_argument("--timeout", type=float, default=1800.0, help="per request, seconds")
    args = ap.parse_args()
    if args.summary:
        return print_summary(args.summary)
    if args.port is None:
        ap.error("--port is required")
    try:
        levels = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        ap.error("--clients takes integers, e.g. 1,8,32")
    if not levels or min(levels) < 1 or args.prompt_tokens < 1 or args.max_tokens < 1:
        ap.error("--clients, --prompt-tokens and --max-tokens must be positive")
    extra = json.loads(args.extra)

    endpoint = sh.Endpoint(args.host, args.port, args.api_key, timeout=args.timeout)
    n_vocab = args.n_vocab or endpoint.n_vocab()
    lo = min(1000, n_vocab // 2)
    rng = random.Random(args.seed)

    def prompt():
        return [rng.randrange(lo, n_vocab) for _ in range(args.prompt_tokens)]

    if not args.no_warmup:
        # As many short requests at once as the largest level has clients: every slot the
        # run will use has served once (llama-server's first use of a slot is slow).
        width = max(levels)
        warm, _ = run_level(endpoint, width, width, [prompt()[:16] for _ in range(width)], 4, extra)
        failed = [r.reason for r in warm if not r.ok]
        if failed:
            sys.exit(f"error: {len(failed)} warm-up requests failed: {failed[0]}")

    print(f"{args.label}: prompts of {args.prompt_tokens} ids (from {lo}..{n_vocab - 1}), "
          f"{args.max_tokens} tokens each, streamed, greedy", file=sys.stderr)
    print(HEADER)
    failed = 0
    for clients in levels:
        n_requests = max(clients * args.rounds, args.min_requests)
        prompts = [prompt() for _ in range(n_requests)]
        results, wall = run_level(endpoint, clients, n_requests, prompts, args.max_tokens, extra)
        s = summarize(args.label, clients, args.prompt_tokens, args.max_tokens, results, wall)
        failed += s["failed"]
        print(row(s), flush=True)
        for reason in s["failures"]:
            print(f"  failure: {reason}", file=sys.stderr)
        if args.jsonl_out:
            with open(args.jsonl_out, "a") as f:
                f.write(json.dumps(s) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
