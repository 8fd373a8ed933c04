#!/usr/bin/env python3
"""The campaign's results table over many chaos runs: runs, faults injected by kind, votes
acknowledged, anomalies, and the unavailability windows (a partition without a 202 for more
than 1 s) per fault kind they were put down to: count, p50, p99, max. Reads each run's
target/chaos/<seed>/report.json.

Usage: perf/scripts/chaos-summary.py target/chaos/<seed> [...]"""
import json
import sys
from collections import Counter, defaultdict


def quantile(sorted_values, q):
    """Nearest-rank quantile."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 1))
    return sorted_values[int(rank) - 1]


runs, acknowledged, anomalies = 0, 0, 0
faults = Counter()
windows = defaultdict(list)
seeds = []
for run in sys.argv[1:]:
    report = json.load(open(f"{run}/report.json"))
    runs += 1
    seeds.append(report["seed"])
    acknowledged += report["acknowledged"]
    anomalies += len(report["anomalies"])
    faults.update(report["faults"])
    for kind, ms in report["unavailable_ms"].items():
        windows[kind].extend(ms)

print(f"runs {runs} (seeds {', '.join(str(s) for s in sorted(seeds))}); "
      f"votes acknowledged {acknowledged:,}; anomalies {anomalies}")
print("faults: " + ", ".join(f"{k} {n}" for k, n in sorted(faults.items())))
print()
print("| put down to | windows > 1 s | p50 | p99 | max |")
print("|---|---|---|---|---|")
for kind in sorted(windows):
    w = sorted(windows[kind])
    fmt = lambda ms: f"{ms / 1000:.1f} s"
    print(f"| {kind} | {len(w)} | {fmt(quantile(w, 0.5))} | {fmt(quantile(w, 0.99))} | {fmt(w[-1])} |")
