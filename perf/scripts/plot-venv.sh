#!/usr/bin/env bash
# Prints the path of a Python venv with perf/scripts/plot-requirements.txt installed, making it
# on first use (PyPI). Kept in the user's cache, named by the requirements' checksum.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
REQ=$ROOT/perf/scripts/plot-requirements.txt
SUM=$(sha256sum "$REQ" | cut -c1-12)
VENV=${XDG_CACHE_HOME:-$HOME/.cache}/votes-perf-venv-$SUM
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
  "${PYTHON:-python3}" -c 'import venv, ensurepip' 2>/dev/null ||
    { echo "error: the plot needs Python 3 with venv (Debian: apt-get install -y python3-venv)" >&2; exit 1; }
  rm -rf "$VENV"
  "${PYTHON:-python3}" -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ" >&2
fi
echo "$VENV"
