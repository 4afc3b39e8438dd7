#!/usr/bin/env python3
"""Splits a server profile into the stages a message crosses: the per-stage CPU budget of bench/README.md.

Input: `perf script -F comm,tid,ip,sym` of a `perf record -g --call-graph dwarf` of the server (bench/profile.sh
makes both). Each sample goes to the first stage whose rule matches its thread name or call stack. With
`--us-per-msg X` (the bench's `cpu.server_us_per_msg` of the same run) each stage's share is also given in
microseconds of server CPU per delivered message.
"""
import argparse
import collections
import sys


def stage(comm, stack):
    """The stage of one sample: `comm` is the thread's name, `stack` its frames (innermost first) joined."""
    has = lambda s: s in stack
    if comm.startswith("sled-io"):
        return "store: sled's IO pool (log writes, freed pages, wake-ups)"
    if comm.startswith("rookery-flush"):
        return "store: fsync (flusher thread)"
    if comm in ("raft", "raft-sync", "raft-snapshots", "log flusher"):
        return "replication threads"
    if has("ConvActor as actix::handler::Handler<rookery::actors::conversation::Post>"):
        if has("Store::cid"):
            return "conversation: dedupe lookup (sled get)"
        if has("sled::"):
            return "conversation: message and dedupe writes (sled insert)"
        if has("ConvState::"):
            return "conversation: state core"
        return "conversation: post (mailbox, proposal, other)"
    if has("ConvActor as actix::handler::Handler<rookery::actors::conversation::Flushed>"):
        return "conversation: after the flush (sent, fan-out)"
    if has("conversation::ConvActor"):
        return "conversation: other (read positions, timers)"
    if has("SessionActor as actix::stream::StreamHandler"):
        if has("serde_json"):
            return "session: parse frames (JSON)"
        if has("FrameReader") or has("TcpReader"):
            return "session: read the socket"
        return "session: dispatch"
    if has("FrameReader") or has("TcpReader"):
        return "session: read the socket"
    if has("SessionActor::flush") or has("OutQueue"):
        return "session: write frames (socket)"
    if has("SessionActor") or has("Router::"):
        return "session: requests to actors, replies"
    if has("sled::"):
        return "store: other sled work"
    if has("actix") or has("tokio::"):
        return "runtime: mailboxes, timers, wake-ups"
    return "other (kernel, allocator outside a stage)"


def samples(lines):
    comm, frames = None, []
    for line in lines:
        if not line.strip():
            if comm is not None:
                yield comm, frames
            comm, frames = None, []
        elif not line.startswith(("\t", " ")):
            if comm is not None:
                yield comm, frames
            comm, frames = line.split()[0], []
        else:
            parts = line.strip().split(" ", 1)
            frames.append(parts[-1])
    if comm is not None:
        yield comm, frames


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--us-per-msg", type=float, help="server CPU per delivered message, from the bench")
    args = parser.parse_args()
    counts = collections.Counter(stage(c, "\n".join(f)) for c, f in samples(sys.stdin))
    total = sum(counts.values())
    if total == 0:
        sys.exit("no samples")
    for name, n in counts.most_common():
        share = n / total
        us = f"{share * args.us_per_msg:6.1f} µs" if args.us_per_msg else ""
        print(f"{100 * share:5.1f}%  {us}  {name}")
    print(f"{total} samples")


if __name__ == "__main__":
    main()
