#!/usr/bin/env python3
"""Medians of bench/run-all.sh output (JSON lines on stdin), grouped by workload, durability and rate."""
import json, statistics, sys
groups = {}
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    key = (r["workload"], r.get("durability"), r.get("rate"))
    groups.setdefault(key, []).append(r)
for (workload, durability, rate), runs in groups.items():
    med = lambda f: statistics.median(f(r) for r in runs)
    if workload == "dm":
        print(f"dm durability={durability} rate={rate} runs={len(runs)}: delivered/s {med(lambda r: r['delivered_per_s']):.0f}, "
              f"accepted/s {med(lambda r: r['accepted_per_s']):.0f}, p50 {med(lambda r: r['latency_ms']['p50']):.2f} ms, "
              f"p99 {med(lambda r: r['latency_ms']['p99']):.2f} ms, p999 {med(lambda r: r['latency_ms']['p999']):.2f} ms"
              + (f", server {med(lambda r: r['cpu']['server_cores']):.2f} cores = "
                 f"{med(lambda r: r['cpu']['server_us_per_msg']):.1f} µs/msg, "
                 f"generator {med(lambda r: r['cpu']['generator_cores']):.2f} cores"
                 if all((r.get('cpu') or {}).get('server_us_per_msg') for r in runs) else ""))
    else:
        print(f"idle runs={len(runs)}: {med(lambda r: r['bytes_per_connection']):.0f} bytes/connection "
              f"({med(lambda r: r['connections']):.0f} connections)")
