#!/usr/bin/env python3
"""The table and plot of one `make perf` run (perf/scripts/perf.sh).

Reads the run directory's JSON files: `appliance-sweep-<rate>.json` and `appliance-fixed.json`
(written by perf.sh from votes-load reports), and `<peer>-max.json` / `<peer>-fixed.json` written
by the peers (`votes-peer`, the Kafka Streams harness). Prints a Markdown section, appends it to
RESULTS.md when asked, and draws the appliance's latency percentiles against offered load.
"""

import argparse
import datetime
import glob
import json
import os
import platform
import re
import subprocess
import sys

PEERS = [
    # (file prefix, label, durable, what its CPU-seconds cover)
    ("floor", "floor: bare rdkafka transactional producer (no dedup: every vote written)", "yes (Kafka, acks=all)", "producer + broker"),
    ("kstreams", "Kafka Streams exactly_once_v2 (seed design)", "yes (Kafka)", "JVM + broker"),
    ("postgres", "PostgreSQL 15, ON CONFLICT + tally update", "yes (fsync, synchronous_commit)", "client + server"),
    ("redis", "Redis, Lua SADD + HINCRBY", "no", "client + redis-server"),
]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def first(d, *keys):
    """The first of `keys` (dotted paths) present in `d`."""
    for k in keys:
        v = d
        for part in k.split("."):
            if not isinstance(v, dict) or part not in v:
                v = None
                break
            v = v[part]
        if v is not None:
            return v
    return None


def peer_figures(d):
    """(votes/s, accepted votes per CPU-second, CPU-s, p99 ms) of a peer's report. Accepted:
    first votes where the peer deduplicates, every vote for the floor (it writes them all)."""
    if d is None:
        return None
    cpu = first(d, "cpu_s")
    accepted = first(d, "accepted", "first_votes", "votes")
    return {
        "rate": first(d, "votes_per_s"),
        "per_cpu": accepted / cpu if accepted is not None and cpu else None,
        "cpu_s": cpu,
        "p99": first(d, "latency_ms.p99", "commit_ms.p99"),
        "votes": first(d, "votes", "records"),
    }


def machine():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} vCPU ({cpu}), {mem_gib:.0f} GiB, Linux {platform.release()}"


def fmt(v, digits=0):
    if v is None:
        return "-"
    if isinstance(v, (int, float)):
        return f"{v:,.{digits}f}"
    return str(v)


def ratio(v, base):
    if v is None or not base:
        return "-"
    return f"{v / base:.2f}×"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--plot", required=True)
    ap.add_argument("--command", default="make perf")
    ap.add_argument("--results-md")
    a = ap.parse_args()

    sweep = []
    for p in glob.glob(os.path.join(a.run, "appliance-sweep-*.json")):
        if p.endswith(".load.json"):
            continue
        sweep.append(load(p))
    sweep.sort(key=lambda r: r["offered_rate"])
    if not sweep:
        sys.exit(f"error: no appliance sweep results in {a.run}")
    fixed = load(os.path.join(a.run, "appliance-fixed.json"))
    best = max(sweep, key=lambda r: r["accepted_per_s"])
    fixed_rate = fixed["offered_rate"] if fixed else None

    rows = [(
        "**votes appliance** (HTTP/1.1, tokens, dedup, tally, Kafka transactions)",
        "yes (Kafka, acks=all)",
        best["achieved_rate"], best["accepted_per_cpu_s"], "serve + broker",
        fixed["latency_ms"]["p99"] if fixed else None,
    )]
    base = best["accepted_per_cpu_s"]
    for prefix, label, durable, cpu_of in PEERS:
        mx = peer_figures(load(os.path.join(a.run, f"{prefix}-max.json")))
        fx = peer_figures(load(os.path.join(a.run, f"{prefix}-fixed.json")))
        rows.append((label, durable, mx and mx["rate"], mx and mx["per_cpu"], cpu_of, fx and fx["p99"]))

    date = datetime.date.today().isoformat()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    out = []
    out.append(f"## {date} — `make perf`: the appliance against its peers (commit {commit})\n")
    out.append(f"Command: `{a.command}`. Machine: {machine()}; every system, its load generator "
               "and the Kafka broker share these CPUs. Raw JSON: `" + os.path.relpath(a.run) + "/`.\n")
    out.append("Main figure: accepted votes per CPU-second of the system under test (CPU from "
               "`/proc/<pid>/stat` of its processes over the run; load generators not counted). The "
               "appliance's row is its sweep point with the most accepted votes/s; peers run closed "
               "loop on pre-made votes (no HTTP, no tokens). Every system gets the same mix: 10% of "
               "votes repeat an earlier voter. p99 at the fixed offered load is from the intended send time "
               "(appliance: HTTP ack; floor: transaction commit; PostgreSQL/Redis: the call).\n")
    out.append(f"| system | durable | votes/s (duplicates included) | accepted votes per CPU-s | ratio to appliance | CPU counted | p99 ms at {fmt(fixed_rate)}/s |")
    out.append("|---|---|---|---|---|---|---|")
    for label, durable, rate, per_cpu, cpu_of, p99 in rows:
        out.append(f"| {label} | {durable} | {fmt(rate)} | {fmt(per_cpu)} | {ratio(per_cpu, base)} | {cpu_of} | {fmt(p99, 1)} |")
    out.append("")
    out.append("Kafka Streams reads the floor's topic, written before it starts: throughput only, no "
               "offered-load latency. The floor writes every vote (it does not deduplicate) in "
               "transactions of up to 2,048; the appliance's cores each commit one transaction at a time "
               "over all their partitions, started when the oldest queued vote has waited the "
               "pacing window (ack target minus the median commit).\n")
    out.append("Appliance sweep (votes-load open loop, HTTP/1.1, "
               f"{sweep[0].get('connections', 256) if isinstance(sweep[0].get('connections'), int) else 256} connections; "
               "plot: `perf/latency-vs-load.png`):\n")
    out.append("| offered/s | accepted/s | p50 ms | p90 ms | p99 ms | p99.9 ms | votes per CPU-s | serve CPU-s | broker CPU-s |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for r in sweep:
        lat = r["latency_ms"]
        out.append(f"| {fmt(r['offered_rate'])} | {fmt(r['accepted_per_s'])} | {fmt(lat['p50'], 1)} | {fmt(lat['p90'], 1)} | "
                   f"{fmt(lat['p99'], 1)} | {fmt(lat['p999'], 1)} | {fmt(r['accepted_per_cpu_s'])} | "
                   f"{fmt(r['serve_cpu_s'], 1)} | {fmt(r['broker_cpu_s'], 1)} |")
    text = "\n".join(out) + "\n"
    print(text)
    if a.results_md:
        with open(a.results_md) as f:
            md = f.read()
        # Newest run first, right after the file's introduction.
        m = re.search(r"^## ", md, re.M)
        at = m.start() if m else len(md)
        with open(a.results_md, "w") as f:
            f.write(md[:at] + text + "\n" + md[at:])

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    xs = [r["offered_rate"] for r in sweep]
    for key, label in [("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p999", "p99.9")]:
        ax.plot(xs, [r["latency_ms"][key] for r in sweep], marker="o", label=label)
    ax2 = ax.twinx()
    ax2.plot(xs, [r["accepted_per_s"] for r in sweep], color="grey", linestyle="--", marker="x", label="accepted/s")
    ax2.set_ylabel("accepted votes/s")
    ax.set_yscale("log")
    ax.set_xlabel("offered votes/s (open loop)")
    ax.set_ylabel("ack latency, ms (from intended send time)")
    ax.set_title(f"votes serve: latency against offered load ({date}, {os.cpu_count()} vCPU shared)")
    ax.grid(True, which="both", alpha=0.3)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left")
    fig.tight_layout()
    fig.savefig(a.plot)
    print(f"plot: {a.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
