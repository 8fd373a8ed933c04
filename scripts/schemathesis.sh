#!/usr/bin/env bash
# Installs schemathesis (the API fuzzer tests/openapi.rs drives, from PyPI) once into a cache
# outside the clone, pinned, and prints the path of its `st` command. Debian's python3 needs
# python3-venv for that; it is installed when missing.
set -euo pipefail

VERSION=4.32.5
TOOLS=${VOTES_TOOLS_DIR:-$HOME/.cache/votes-tools}
VENV=$TOOLS/schemathesis-$VERSION
ST=$VENV/bin/st

mkdir -p "$TOOLS"
# Several test binaries may ask at once: one installs, the others wait for it.
exec 9>"$TOOLS/schemathesis.lock"
flock 9

if [[ -x $ST ]] && "$ST" --version 2>/dev/null | grep -q "$VERSION"; then
  echo "$ST"
  exit 0
fi

command -v python3 >/dev/null || {
  echo "schemathesis.sh: python3 is missing (apt-get install -y python3 python3-venv)" >&2
  exit 1
}
rm -rf "$VENV"
if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
  echo "schemathesis.sh: python3 cannot make a venv; installing python3-venv" >&2
  rm -rf "$VENV"
  if [[ $(id -u) -eq 0 ]]; then SUDO=(); else SUDO=(sudo); fi
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q python3-venv >&2
  python3 -m venv "$VENV"
fi
started=$(date +%s)
"$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION" >&2 || {
  rm -rf "$VENV"
  echo "schemathesis.sh: pip could not install schemathesis==$VERSION from PyPI" >&2
  exit 1
}
echo "schemathesis.sh: schemathesis $VERSION installed in $(( $(date +%s) - started )) s" >&2
echo "$ST"
