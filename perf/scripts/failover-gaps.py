#!/usr/bin/env python3
"""Failover gaps of a chaos run: for each node fault (kill-node, freeze-node, partition-node),
the time from the fault to the first 202 of each partition the faulted node was serving (a
partition with no 202 in the first 300 ms after the fault), from target/chaos/<seed>/history.jsonl.

Usage: perf/scripts/failover-gaps.py target/chaos/<seed> [...]"""
import json
import sys

NODE_FAULTS = ("kill-node", "freeze-node", "partition-node")

for run in sys.argv[1:]:
    faults, acks = [], []
    for line in open(f"{run}/history.jsonl"):
        d = json.loads(line)
        if "kind" in d and "from_ms" in d:
            faults.append(d)
        elif d.get("status") == 202 and d.get("partition") is not None:
            acks.append((d["answered_ms"], d["partition"]))
    acks.sort()
    for f in faults:
        if f["kind"] not in NODE_FAULTS:
            continue
        t0 = f["from_ms"]
        gaps = {}
        for p in sorted({p for _, p in acks}):
            after = [t for t, q in acks if q == p and t >= t0]
            if not after:
                gaps[p] = None
            elif after[0] - t0 > 300:
                gaps[p] = after[0] - t0
        shown = ", ".join(
            f"p{p} {'never' if g is None else f'{g / 1000:.2f} s'}" for p, g in gaps.items()
        )
        print(f"{run}: {f['kind']} {f['target']}: {shown or 'no partition waited'}")
