#!/usr/bin/env bash
# Serving speed, rg-server next to llama.cpp's llama-server under the same load: for each
# number of concurrent clients (1, 8, 32), every client streams /v1/completions requests with
# a prompt of exactly PROMPT token ids and GEN generated tokens; scripts/server-latency.py
# measures aggregate generated tokens/s, time to first token p50/p95 and time between tokens
# p50/p95. Both servers get the same slots (-np), threads (-t) and requests; each is started,
# measured and stopped in turn, alone on the machine (run it on a quiet machine).
#
# Usage: scripts/bench-server.sh [OUT_DIR]        (default target/bench-server)
# Environment (all optional):
#   RG_MODEL=/work/bench/rg2b/rg2b-q4_0.gguf     rgemma's model (2B geometry, Q4_0)
#   LLAMA_SERVER=/work/bench/llama-build/bin/llama-server   (empty or missing: rg-server only)
#   LLAMA_MODEL=/work/bench/gemma2b-q4_0.gguf    a same-size random transformer, same type
#   CLIENTS=1,8,32 PROMPT=512 GEN=128 NP=32 THREADS=2 ROUNDS=1 MIN_REQUESTS=4
#   SERVERS="rg llama"                           which servers, in this order
#   RG_ARGS, LLAMA_ARGS                          extra flags for each server
#   LOAD_TIMEOUT=600                             seconds to wait for a server's /health
# Output: OUT_DIR/results.jsonl (one line per server and level), OUT_DIR/report.md (the
# commands, the table, each server's peak RSS), OUT_DIR/<server>.log (the server's stderr).
#
# A quick check of the script itself with the bundled model (rg-server only):
#   RG_MODEL=models/tiny-fortunes-q8_0.gguf SERVERS=rg CLIENTS=1,4 PROMPT=64 GEN=16 NP=4 \
#     scripts/bench-server.sh target/bench-server-tiny
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/bench-server}
rg_model=${RG_MODEL:-/work/bench/rg2b/rg2b-q4_0.gguf}
llama_server=${LLAMA_SERVER:-/work/bench/llama-build/bin/llama-server}
llama_model=${LLAMA_MODEL:-/work/bench/gemma2b-q4_0.gguf}
clients=${CLIENTS:-1,8,32}
prompt=${PROMPT:-512}
gen=${GEN:-128}
np=${NP:-32}
threads=${THREADS:-2}
rounds=${ROUNDS:-1}
min_requests=${MIN_REQUESTS:-4}
servers=${SERVERS:-rg llama}
load_timeout=${LOAD_TIMEOUT:-600}
read -r -a rg_extra <<<"${RG_ARGS:-}"
read -r -a llama_extra <<<"${LLAMA_ARGS:-}"

mkdir -p "$out"
results="$out/results.jsonl"
report="$out/report.md"
: >"$results"
cargo build --release --bin rg-server >/dev/null

pid=""
stop_server() {
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
}
trap stop_server EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until GET /health answers 200 (both servers answer 503 while loading).
wait_ready() {
  local port=$1 deadline=$((SECONDS + load_timeout))
  while [ $SECONDS -lt $deadline ]; do
    kill -0 "$pid" 2>/dev/null || { echo "error: the server exited while loading" >&2; return 1; }
    if python3 -c "import sys, urllib.request as u
sys.exit(u.urlopen('http://127.0.0.1:$port/health', timeout=5).status != 200)" 2>/dev/null; then
      return 0
    fi
    sleep 0.5
  done
  echo "error: the server did not become ready in ${load_timeout} s" >&2
  return 1
}

{
  echo "# Serving speed, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
  echo "CPU: $cpu, $(nproc) cores; $threads threads, -np $np"
  echo "rgemma $(git describe --always --dirty 2>/dev/null || echo '?')"
  echo "Load: clients $clients; prompts of $prompt random token ids; $gen tokens each, streamed, greedy;"
  echo "max(C x $rounds, $min_requests) requests per level (scripts/server-latency.py)"
  echo
} >"$report"

for server in $servers; do
  port=$(free_port)
  case $server in
    rg)
      label=rg-server
      cmd=(target/release/rg-server -m "$rg_model" --host 127.0.0.1 --port "$port"
        -np "$np" -t "$threads" --timeout 0 "${rg_extra[@]}")
      ;;
    llama)
      if [ ! -x "$llama_server" ] || [ ! -f "$llama_model" ]; then
        echo "skipping llama-server: $llama_server or $llama_model is missing" | tee -a "$report" >&2
        continue
      fi
      label=llama-server
      # Every slot must hold a whole request: prompt + answer, with room to spare.
      ctx=$((np * (prompt + gen + 64)))
      cmd=("$llama_server" -m "$llama_model" --host 127.0.0.1 --port "$port"
        -np "$np" -t "$threads" -tb "$threads" -c "$ctx" --cont-batching --timeout 3600
        "${llama_extra[@]}")
      ;;
    *)
      echo "error: unknown server '$server' in SERVERS (rg, llama)" >&2
      exit 2
      ;;
  esac
  echo "== $label: ${cmd[*]}" | tee -a "$report" >&2
  "${cmd[@]}" >"$out/$label.log" 2>&1 &
  pid=$!
  wait_ready "$port"
  python3 scripts/server-latency.py --port "$port" --label "$label" --clients "$clients" \
    --prompt-tokens "$prompt" --max-tokens "$gen" --rounds "$rounds" \
    --min-requests "$min_requests" --timeout 3600 --jsonl-out "$results" || status=$?
  hwm=$(awk '/^VmHWM/ {printf "%.0f MiB", $2 / 1024}' "/proc/$pid/status" 2>/dev/null || echo "?")
  echo "$label peak RSS (VmHWM): $hwm" | tee -a "$report" >&2
  stop_server
  if [ "${status:-0}" != 0 ]; then
    echo "error: $label had failed requests (see above and $out/$label.log)" >&2
    exit 1
  fi
done

{
  echo
  echo '```'
  python3 scripts/server-latency.py --summary "$results"
  echo '```'
} >>"$report"
cat "$report"
echo "results: $results, report: $report"
