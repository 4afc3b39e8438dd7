#!/usr/bin/env bash
# Profiles the server under one bench workload and prints its per-stage CPU budget (bench/stages.py).
#   bench/profile.sh dm --pairs 500 --window 16 --seconds 12 [--rate R]
# Needs perf (Debian's linux-perf) and a release build (which keeps debug info). The bench starts the server;
# perf samples it (software clock, DWARF call graphs) for PROFILE_SECONDS (default 6) after a 5 s start.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PROFILED=${PROFILE_SECONDS:-6}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
./target/release/rookery-bench "$@" > "$OUT/bench.json" &
BENCH=$!
sleep 5
PID=$(pgrep -P "$BENCH" -x rookery | head -1)
perf record -q -e cpu-clock -F 499 -g --call-graph dwarf,16384 -p "$PID" -o "$OUT/perf.data" \
  -- sleep "$SECONDS_PROFILED" 2>/dev/null
wait "$BENCH"
US=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['cpu']['server_us_per_msg'])" "$OUT/bench.json")
tail -1 "$OUT/bench.json"
perf script -i "$OUT/perf.data" -F comm,tid,ip,sym 2>/dev/null | python3 bench/stages.py --us-per-msg "$US"
