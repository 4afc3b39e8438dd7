#!/usr/bin/env python3
"""Where the nodes' threads wait on the disk: samples the kernel stacks of blocked threads.

    bench/blocked.py sample OUT SECONDS     # beside a running bench; needs root (/proc/PID/task/TID/stack)
    bench/blocked.py summary OUT [FROM TO]  # the waits by node, thread and kind (unix seconds FROM to TO)

`sample` looks at every thread of every process whose name starts with `rookery` (but `rookery-bench`)
every 20 ms and writes one line per thread in uninterruptible sleep (state D: a disk write, a sync, a
lock held across one): `time pid thread frames`, the innermost kernel frame first. Each line stands for
about one sampling interval of waiting. `summary` counts them, with each stack reduced to the kind of
wait it shows (bench/README.md, "Stop 35", for what the kinds meant in a 1 GiB move).
"""

import collections
import os
import sys
import time

INTERVAL_S = 0.02


def sample(out_path, seconds):
    end = time.time() + seconds
    with open(out_path, "w") as out:
        while time.time() < end:
            now = time.time()
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    comm = open(f"/proc/{pid}/comm").read().strip()
                    if not comm.startswith("rookery") or comm == "rookery-bench":
                        continue
                    tids = os.listdir(f"/proc/{pid}/task")
                except OSError:
                    continue
                for tid in tids:
                    task = f"/proc/{pid}/task/{tid}"
                    try:
                        stat = open(f"{task}/stat").read()
                        if stat[stat.rindex(")") + 2] != "D":
                            continue
                        thread = open(f"{task}/comm").read().strip().replace(" ", "_")
                        frames = [
                            line.split(" ", 1)[1].split("+")[0]
                            for line in open(f"{task}/stack").read().splitlines()
                            if " " in line
                        ]
                    except OSError:
                        continue
                    out.write(f"{now:.3f} {pid} {thread} {';'.join(frames[:14])}\n")
            out.flush()
            time.sleep(INTERVAL_S)


def kind(frames):
    if "blkdev_issue_discard" in frames:
        return "discard (blocks freed: a file deleted or truncated)"
    if "blkdev_issue_flush" in frames:
        return "device cache flush (fsync)"
    if "folio_wait_writeback" in frames:
        return "waiting for pages under writeback (fsync, sync_file_range)"
    if frames.startswith("ext4_buffered_write_iter"):
        return "write waiting for the file's lock (another write to it)"
    return frames.split(";", 1)[0]


def summary(path, start=None, end=None):
    counts = collections.Counter()
    for line in open(path):
        at, pid, thread, frames = line.rstrip("\n").split(" ", 3)
        if start is not None and not start <= float(at) < end:
            continue
        if thread.startswith("sled-io"):
            thread = "sled-io-*"
        counts[(pid, thread, kind(frames))] += 1
    for (pid, thread, what), n in counts.most_common():
        print(f"{n * INTERVAL_S:8.2f} s  pid {pid:>7}  {thread:<24} {what}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "sample":
        sample(sys.argv[2], float(sys.argv[3]))
    elif len(sys.argv) in (3, 5) and sys.argv[1] == "summary":
        bounds = [float(a) for a in sys.argv[3:5]]
        summary(sys.argv[2], *bounds)
    else:
        sys.exit(__doc__)
