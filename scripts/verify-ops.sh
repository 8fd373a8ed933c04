#!/usr/bin/env bash
# The operators' artefacts in ops/, as `make test` checks them (the series they read are checked
# against a running node and persister by tests/ops.rs):
# - the alerting rules: `promtool check rules` and their unit tests (`promtool test rules`);
# - the scrape configuration: `promtool check config`;
# - the Grafana dashboard: well-formed (unique panel ids, a query per target, the variables it
#   uses defined) and every query valid PromQL (promtool checks them as recording rules).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if ! command -v promtool >/dev/null; then
  # Debian's prometheus package ships promtool; the server it also installs is not started.
  command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] ||
    { echo "error: promtool not found (Debian: apt-get install -y prometheus)" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
fi
cd "$ROOT/ops/prometheus"
promtool check rules votes.rules.yml
promtool test rules votes.rules.test.yml
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# The configuration names the admin token's file where a Prometheus host keeps it; promtool
# checks that it exists, so it checks a copy that names a file made here.
cp prometheus.yml votes.rules.yml "$WORK"/
echo "a-token-for-the-check" >"$WORK/votes-admin-token"
sed -i "s#/etc/prometheus/votes-admin-token#$WORK/votes-admin-token#" "$WORK/prometheus.yml"
grep -q "$WORK/votes-admin-token" "$WORK/prometheus.yml" ||
  { echo "error: prometheus.yml no longer reads /etc/prometheus/votes-admin-token" >&2; exit 1; }
promtool check config "$WORK/prometheus.yml"
python3 - "$ROOT/ops/grafana/votes-fleet.json" "$WORK/dashboard.rules.yml" <<'PY'
import json, re, sys
dash = json.load(open(sys.argv[1]))
problems = []
ids = [p.get("id") for p in dash["panels"]]
if len(ids) != len(set(ids)) or None in ids:
    problems.append(f"panel ids must be present and unique: {ids}")
variables = {v["name"] for v in dash["templating"]["list"]}
builtin = {"__rate_interval", "__interval", "__range", "__all"}
rules = []
for p in dash["panels"]:
    if p["type"] == "row":
        continue
    for k in ("title", "datasource", "gridPos", "targets"):
        if k not in p:
            problems.append(f"panel {p.get('id')}: no {k}")
    for t in p.get("targets", []):
        expr = t.get("expr", "")
        if not expr:
            problems.append(f"panel {p['id']} ({p['title']}): a target without a query")
            continue
        for var in re.findall(r"\$\{?(\w+)", expr):
            if var not in variables | builtin:
                problems.append(f"panel {p['id']}: ${var} is not a variable of the dashboard")
        # What Grafana substitutes before the query reaches Prometheus.
        q = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
        rules.append(f"      - record: dashboard:panel{p['id']}:{t['refId']}\n        expr: {json.dumps(q)}\n")
if problems:
    sys.exit("ops/grafana/votes-fleet.json:\n  " + "\n  ".join(problems))
open(sys.argv[2], "w").write("groups:\n  - name: dashboard\n    rules:\n" + "".join(rules))
print(f"dashboard: {len(dash['panels'])} panels, {len(rules)} queries")
PY
promtool check rules "$WORK/dashboard.rules.yml" >/dev/null ||
  { promtool check rules "$WORK/dashboard.rules.yml" >&2 || true; echo "error: a dashboard query is not valid PromQL" >&2; exit 1; }
# Every alert's runbook link names a heading of docs/operations.md.
missing=$(comm -23 <(grep -o 'runbook: docs/operations.md#[a-z0-9-]*' votes.rules.yml | sed 's/.*#//' | sort -u) \
  <(sed -n 's/^### //p' "$ROOT/docs/operations.md" | tr 'A-Z ' 'a-z-' | sort -u))
[ -z "$missing" ] || { echo "error: runbook anchors without a heading in docs/operations.md: $missing" >&2; exit 1; }
echo "ops: rules, their tests, the scrape configuration and the dashboard check out"
