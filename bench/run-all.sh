#!/usr/bin/env bash
# Runs the benchmark set of bench/README.md, RUNS times each, one JSON line per run (medians: bench/median.py).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
cargo build --release --quiet
B=./target/release/rookery-bench
for i in $(seq "$RUNS"); do
  $B --durability sync dm --pairs 500 --window 16 --seconds 10
  $B --durability os dm --pairs 500 --window 16 --seconds 10
  $B --durability sync dm --pairs 500 --window 16 --seconds 10 --rate 10000
  $B idle --connections 19000
done
