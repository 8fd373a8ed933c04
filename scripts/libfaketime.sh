#!/usr/bin/env bash
# Prints the path of libfaketime's multi-threaded library (Debian's package), installing the
# package first when it is missing. Used by `make chaos` (the jump-clock fault) and by the test
# of a member wedged by a clock stepped back (tests/group_failover.rs).
set -euo pipefail
lib() { ls /usr/lib/*/faketime/libfaketimeMT.so.1 2>/dev/null | head -1 || true; }
if [ -z "$(lib)" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q libfaketime >/dev/null ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libfaketime >/dev/null; } ||
    true
fi
found=$(lib)
[ -n "$found" ] || { echo "error: libfaketime is not installed and could not be (apt-get install libfaketime)" >&2; exit 1; }
echo "$found"
