#!/usr/bin/env python3
"""Failover gaps of a chaos run: for each node fault (kill-node, freeze-node, partition-node),
the time from the fault to the first 202 of each partition the faulted node was serving (a
partition with no 202 in the first 300 ms after the fault), from target/chaos/<seed>/history.jsonl.

With --owned, only the partitions the faulted node owned at the fault are shown (its last
"partitions assigned" line before the fault in node-<n>.log): a restarted node taking its
partitions back, or another node's fault close before, also leaves partitions without a 202,
but that is not this fault's failover. --summary prints the p50, p90, p99 and max over every
gap shown, faults whose partitions were still waiting when the run ended left out.

Usage: perf/scripts/failover-gaps.py [--owned] [--summary] target/chaos/<seed> [...]"""
import datetime
import json
import re
import sys

NODE_FAULTS = ("kill-node", "freeze-node", "partition-node")
ASSIGNED = re.compile(r"^(\S+)Z .*partitions assigned member=(node-\d+)-\d+ partitions=\[([\d, ]*)\]")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def assignments(run, node):
    """(ms, partitions) of each assignment the node's log shows, oldest first."""
    out = []
    try:
        lines = open(f"{run}/{node}.log", errors="replace")
    except OSError:
        return out
    for line in lines:
        m = ASSIGNED.match(ANSI.sub("", line))
        if m and m.group(2) == node:
            at = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc)
            parts = {int(p) for p in m.group(3).split(",") if p.strip()}
            out.append((at.timestamp() * 1000, parts))
    return out


def owned_at(run, node, t_ms):
    held = set()
    for at, parts in assignments(run, node):
        if at > t_ms:
            break
        held = parts
    return held


args = [a for a in sys.argv[1:] if not a.startswith("--")]
owned_only = "--owned" in sys.argv
summary = "--summary" in sys.argv
kinds = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--kind=")] or NODE_FAULTS
every_gap = []
for run in args:
    faults, acks = [], []
    for line in open(f"{run}/history.jsonl"):
        d = json.loads(line)
        if "kind" in d and "from_ms" in d:
            faults.append(d)
        elif d.get("status") == 202 and d.get("partition") is not None:
            acks.append((d["answered_ms"], d["partition"]))
    acks.sort()
    for f in faults:
        if f["kind"] not in NODE_FAULTS or f["kind"] not in kinds:
            continue
        t0 = f["from_ms"]
        candidates = sorted({p for _, p in acks})
        if owned_only:
            candidates = [p for p in candidates if p in owned_at(run, f["target"], t0)]
        gaps = {}
        for p in candidates:
            after = [t for t, q in acks if q == p and t >= t0]
            if not after:
                gaps[p] = None
            elif after[0] - t0 > 300:
                gaps[p] = after[0] - t0
        every_gap += [g for g in gaps.values() if g is not None]
        shown = ", ".join(
            f"p{p} {'never' if g is None else f'{g / 1000:.2f} s'}" for p, g in gaps.items()
        )
        print(f"{run}: {f['kind']} {f['target']}: {shown or 'no partition waited'}")

if summary and every_gap:
    every_gap.sort()
    pick = lambda q: every_gap[min(len(every_gap) - 1, int(q * len(every_gap)))] / 1000
    print(
        f"{len(every_gap)} gaps: p50 {pick(0.5):.2f} s, p90 {pick(0.9):.2f} s, "
        f"p99 {pick(0.99):.2f} s, max {every_gap[-1] / 1000:.2f} s"
    )
