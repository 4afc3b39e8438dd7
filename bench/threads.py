#!/usr/bin/env python3
"""How much CPU each kind of node thread uses, second by second: a sampler to run beside a bench.

    bench/threads.py sample OUT                 # beside a running bench; stops when no node is left
    bench/threads.py move OUT                   # per `rebalance` run: 60 s from the joiner's start

`sample` reads, once a second, the CPU time (user + system) of every thread of every process started with
`--node` (the bench's nodes) from /proc/PID/task/TID/stat, and writes one JSON line per second:
`{"t": unix seconds, "p": {"NODE:PID": [process ticks, {thread name: ticks}]}}`. It waits for the first
node and ends 10 s after the last one is gone, so it can be started before a chain of runs.

`move` finds each run's joining node (`n4`) and prints, over the 60 s from its first sample, the cores
each node used, then by thread kind (numbered threads such as sled's `sled-io-N` summed; `main` is the
node's main thread, which runs its peer links) on the joiner (J) and on the old nodes together (O), and
the busiest second of the joiner's main and receiving threads and of the old nodes' senders
(bench/README.md, "Stop 41").
"""

import collections
import json
import os
import re
import sys
import time

KINDS = ["main", "raft-snaps-in", "raft-snapshot-i", "raft-snapshots", "raft-snapshot-m", "sled-io", "raft-apply"]


def ticks(stat):
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def sample(out_path):
    seen, gone_since = False, None
    with open(out_path, "a") as out:
        while True:
            now = time.time()
            rec = {"t": round(now, 2), "p": {}}
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
                    if b"--node" not in cmd:
                        continue
                    node = cmd[cmd.index(b"--node") + 1].decode()
                    threads = collections.Counter()
                    for tid in os.listdir(f"/proc/{pid}/task"):
                        try:
                            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
                        except OSError:
                            continue
                        threads[stat[stat.index("(") + 1 : stat.rindex(")")]] += ticks(stat)
                    rec["p"][f"{node}:{pid}"] = [ticks(open(f"/proc/{pid}/stat").read()), threads]
                except (OSError, ValueError, IndexError):
                    continue
            if rec["p"]:
                seen, gone_since = True, None
                out.write(json.dumps(rec) + "\n")
                out.flush()
            elif seen:
                gone_since = gone_since or now
                if now - gone_since > 10:
                    return
            time.sleep(1 - (time.time() - now) % 1)


def kind(thread):
    if thread == "rookery-flush":
        return "flush"
    if thread.startswith("rookery"):
        return "main"
    return re.sub(r"-\d+$", "", thread)


def move(path):
    hz = os.sysconf("SC_CLK_TCK")
    recs = [json.loads(line) for line in open(path)]
    joiners = {}
    for r in recs:
        for key in r["p"]:
            if key.startswith("n4:"):
                joiners.setdefault(key, r["t"])
    for joiner, start in joiners.items():
        window = [r for r in recs if joiner in r["p"] and start <= r["t"] <= start + 60]
        if len(window) < 2:
            continue
        first, last = window[0], window[-1]
        span = last["t"] - first["t"]
        nodes, by_kind = {}, collections.Counter()
        for key, (total, threads) in last["p"].items():
            if key not in first["p"]:
                continue
            node = key.split(":")[0]
            side = "J" if node == "n4" else "O"
            nodes[node] = (total - first["p"][key][0]) / hz / span
            for thread, t in threads.items():
                by_kind[(side, kind(thread))] += (t - first["p"][key][1].get(thread, 0)) / hz / span
        peaks = collections.defaultdict(float)
        for a, b in zip(window, window[1:]):
            step = collections.Counter()
            for key, (_, threads) in b["p"].items():
                if key not in a["p"]:
                    continue
                side = "J" if key.startswith("n4:") else "O"
                for thread, t in threads.items():
                    step[(side, kind(thread))] += (t - a["p"][key][1].get(thread, 0)) / hz / (b["t"] - a["t"])
            for k, v in step.items():
                peaks[k] = max(peaks[k], v)
        print(f"{joiner} nodes {sum(nodes.values()):.2f} cores, joiner {nodes.get('n4', 0):.3f}")
        for side in "JO":
            print(f"  {side}: " + " ".join(f"{k}={by_kind[(side, k)]:.3f}" for k in KINDS if by_kind[(side, k)]))
        print(
            "  busiest second: joiner main {:.2f}, raft-snaps-in {:.2f}; old nodes' senders {:.2f}".format(
                peaks[("J", "main")], peaks[("J", "raft-snaps-in")], peaks[("O", "raft-snapshots")]
            )
        )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "sample":
        sample(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "move":
        move(sys.argv[2])
    else:
        sys.exit(__doc__)
