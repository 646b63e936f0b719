#!/usr/bin/env python3
"""A long chat through rg-server, showing what each turn costs: the client sends the whole
history every turn (as OpenAI clients do), and the server's /metrics tell how many prompt
tokens it ran through the model and how many it restored from its prompt cache.

    scripts/server-chat-turns.py http://127.0.0.1:8080 [--turns 20] [--max-tokens 48] [--api-key K]

Prints one line per turn: the request's prompt tokens (usage), the prompt tokens the server
ran for it, those restored from a snapshot, and the tokens it ran to close the previous answer.
Exits non-zero when a turn after the first ran more prompt tokens than its new user message
plus the turn template (i.e. when the history was recomputed). Loopback only.
"""

import argparse
import json
import sys
import urllib.parse
import urllib.request

METRICS = (
    "rgemma_prompt_tokens_total",
    "rgemma_prompt_tokens_cached_total",
    "rgemma_closing_tokens_total",
)


def request(url, path, body=None, key=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method="GET" if body is None else "POST")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=600) as r:
        return r.read().decode()


def metrics(url, key):
    out = {}
    for line in request(url, "/metrics", key=key).splitlines():
        name, _, value = line.partition(" ")
        if name in METRICS:
            out[name] = float(value)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--api-key")
    args = ap.parse_args()
    host = urllib.parse.urlparse(args.url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit(f"refusing {host}: loopback only")
    url = args.url.rstrip("/")
    messages = [{"role": "system", "content": "You are a fortune cookie."}]
    print("turn  prompt_tokens  ran  restored  closing  new_message_tokens")
    bad = 0
    for turn in range(1, args.turns + 1):
        user = f"Turn {turn}: tell me one more fortune about number {turn * 7}."
        messages.append({"role": "user", "content": user})
        before = metrics(url, args.api_key)
        reply = json.loads(request(url, "/v1/chat/completions", {
            "messages": messages, "max_tokens": args.max_tokens, "temperature": 0,
        }, args.api_key))
        after = metrics(url, args.api_key)
        text = reply["choices"][0]["message"]["content"]
        messages.append({"role": "assistant", "content": text})
        d = {k: int(after[k] - before[k]) for k in METRICS}
        new_tokens = len(json.loads(request(url, "/tokenize", {
            "content": f"<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n",
        }, args.api_key))["tokens"])
        ran = d["rgemma_prompt_tokens_total"]
        print(f"{turn:4d}  {reply['usage']['prompt_tokens']:13d}  {ran:3d}  "
              f"{d['rgemma_prompt_tokens_cached_total']:8d}  "
              f"{d['rgemma_closing_tokens_total']:7d}  {new_tokens:18d}")
        # The turn's own tokens, plus a newline the template puts between turns.
        if turn > 1 and ran > new_tokens + 2:
            bad += 1
    if bad:
        sys.exit(f"{bad} turn(s) recomputed more than their new message")


if __name__ == "__main__":
    main()
