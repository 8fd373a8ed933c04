#!/usr/bin/env bash
# `systemd-analyze verify` of every unit in systemd/ (with its drop-ins), as `make test` runs it.
# The units name /usr/local/bin/votes, which a build machine does not have: a copy of them names
# the freshly built binary instead (verify checks that ExecStart exists and is executable).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-${CARGO_TARGET_DIR:-$HOME/.cache/votes-target}/debug/votes}
if ! command -v systemd-analyze >/dev/null; then
  # Debian's systemd package ships it; install it when we may (a fresh machine or container).
  command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] ||
    { echo "error: systemd-analyze not found (Debian: apt-get install -y systemd)" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q systemd >/dev/null
fi
[ -x "$BIN" ] || { echo "error: $BIN is not built (cargo build -p votes)" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cp -r "$ROOT"/systemd/. "$WORK"/
find "$WORK" -type f -exec sed -i "s#/usr/local/bin/votes#$BIN#g" {} +
# A template is verified through an instance; its drop-in directory follows the instance name.
cp "$WORK/votes-serve@.service" "$WORK/votes-serve@node-a.service"
cp -r "$WORK/votes-serve@.service.d" "$WORK/votes-serve@node-a.service.d"
units=()
for u in "$WORK"/*.service "$WORK"/*.timer; do
  case "$u" in *@.service) continue ;; esac
  units+=("$u")
done
cd "$WORK"
out=$(SYSTEMD_UNIT_PATH="$WORK:" systemd-analyze verify --man=no --generators=no "${units[@]}" 2>&1) || {
  echo "$out" >&2; echo "error: systemd-analyze verify failed" >&2; exit 1; }
# verify exits 0 on some problems it only prints (unknown directives, bad values): fail on them.
if [ -n "$out" ]; then echo "$out" >&2; echo "error: systemd-analyze verify printed warnings" >&2; exit 1; fi
# `systemd-analyze security` rates each service's exposure from 0 (locked down) to 10; the
# units keep to "OK" or better (below 2.0 here: no capabilities, a system-call filter, private
# users, devices and mounts, credentials instead of secrets in the environment).
MAX_EXPOSURE=2.0
for u in "${units[@]}"; do
  case "$u" in *.service) ;; *) continue ;; esac
  name=$(basename "$u")
  line=$(SYSTEMD_UNIT_PATH="$WORK:" systemd-analyze security --offline=true --no-pager "$name" 2>&1 |
    grep 'Overall exposure level') ||
    { echo "error: systemd-analyze security could not rate $name" >&2; exit 1; }
  score=$(sed -E 's/.*: ([0-9.]+) .*/\1/' <<<"$line")
  awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }' ||
    { echo "error: $line (at most $MAX_EXPOSURE)" >&2; exit 1; }
  echo "  $name: exposure $score"
done
echo "systemd units verified: ${#units[@]} ($(cd "$ROOT/systemd" && ls | tr '\n' ' '))"
