#!/usr/bin/env bash
# Busy share of each thread of a command, from perf's CPU-clock samples (1 kHz per thread):
# samples of a thread / (sampling window × 1000). A thread pool whose threads are busy well
# under 100 % of a decode loses that time to joins and wake-ups, not to the kernels.
# Needs `perf` (linux-perf) and perf_event_paranoid <= 2. DELAY_MS skips the model load.
#
#   DELAY_MS=4000 scripts/thread-busy.sh target/release/rg-bench -m FILE -p 0 -n 96 -t 2 -r 1
set -euo pipefail
data=$(mktemp)
trap 'rm -f "$data"' EXIT
perf record -q -F 1000 -D "${DELAY_MS:-0}" -o "$data" "$@"
perf script -i "$data" -F tid,comm,time 2>/dev/null | awk '
    { t = $NF + 0; if (!start) start = t; end = t; n[$1 " " $2]++ }
    END {
        w = end - start
        printf "sampling window %.1f s\n", w
        for (k in n) if (n[k] > 10) printf "thread %s: busy %.0f %%\n", k, n[k] / w / 10
    }'
