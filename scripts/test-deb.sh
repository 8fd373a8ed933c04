#!/usr/bin/env bash
# `make test-deb`: builds the Debian package (scripts/package-deb.sh), installs it on this
# machine, and checks what an operator relies on: the `votes` user and its state directory,
# the secrets file's mode, `systemd-analyze verify` of the installed units, `votes tune check`,
# the default configuration accepted by `votes serve`, and `votes init` run as the service user
# against the local services (scripts/services.sh). Purges the package at the end, also on
# failure. Needs root (dpkg) and the services up (`make services-up`).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "error: test-deb installs a package: run it as root" >&2; exit 1; }
fail() { echo "error: test-deb: $*" >&2; exit 1; }
if dpkg -s votes >/dev/null 2>&1; then
  fail "a votes package is already installed here; this test installs and purges its own (dpkg --purge votes first)"
fi
deb=$("$ROOT/scripts/package-deb.sh")
WORK=$(mktemp -d)
cleanup() { dpkg --purge votes >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
echo "test-deb: installing $(basename "$deb")"
DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" >/dev/null
dpkg -s votes | grep -q '^Status: install ok installed' || fail "dpkg does not report votes installed"

# The user, its state directory, the secrets.
getent passwd votes >/dev/null || fail "no votes user after install"
[ "$(stat -c '%U:%G %a' /var/lib/votes)" = "votes:votes 700" ] ||
  fail "/var/lib/votes is $(stat -c '%U:%G %a' /var/lib/votes), want votes:votes 700"
[ "$(stat -c '%U:%G %a' /etc/votes/credentials)" = "root:root 700" ] ||
  fail "/etc/votes/credentials is $(stat -c '%U:%G %a' /etc/votes/credentials), want root:root 700"
for name in VOTES_TOKEN_KEY VOTES_AUDIT_KEY VOTES_ADMIN_TOKEN VOTES_FORWARD_KEY; do
  file=/etc/votes/credentials/$name
  [ "$(stat -c '%U:%G %a' "$file")" = "root:root 600" ] || fail "$file is not root:root 600"
  [ "$(tr -d '\n' <"$file" | wc -c)" -ge 32 ] || fail "$file holds fewer than 32 bytes"
done
for name in VOTES_REDIS_PASSWORD VOTES_KAFKA_PASSWORD; do
  [ "$(stat -c '%U:%G %a %s' "/etc/votes/credentials/$name")" = "root:root 600 0" ] ||
    fail "$name is not an empty root:root 600 credential after install"
done
[ "$(sort -u /etc/votes/credentials/* | wc -l)" = 4 ] || fail "the four secrets made at install are not distinct"
# The installed binary reads them the way a unit's LoadCredential= hands them over.
env -i VOTES_LOG=warn CREDENTIALS_DIRECTORY=/etc/votes/credentials /usr/bin/votes token --voter 1 >/dev/null ||
  fail "votes does not read VOTES_TOKEN_KEY from \$CREDENTIALS_DIRECTORY"
grep -q '^LoadCredential=VOTES_TOKEN_KEY:/etc/votes/credentials/VOTES_TOKEN_KEY$' \
  /lib/systemd/system/votes-serve@.service || fail "votes-serve@ does not load its credentials"
[ "$(stat -c '%U:%G %a' /etc/votes/votes.env)" = "root:votes 640" ] ||
  fail "/etc/votes/votes.env is $(stat -c '%U:%G %a' /etc/votes/votes.env), want root:votes 640"
dpkg-query -W -f='${Conffiles}\n' votes | grep -q /etc/votes/votes.toml || fail "votes.toml is not a conffile"

# The installed units, through the paths systemd itself would search.
units=()
for u in /lib/systemd/system/votes-*.service /lib/systemd/system/votes-*.timer; do
  case "$u" in *@.service) units+=("/lib/systemd/system/votes-serve@node-a.service") ;; *) units+=("$u") ;; esac
done
cp /lib/systemd/system/votes-serve@.service /lib/systemd/system/votes-serve@node-a.service
ln -sfn votes-serve@.service.d /lib/systemd/system/votes-serve@node-a.service.d
out=$(systemd-analyze verify --man=no --generators=no "${units[@]}" 2>&1) || true
rm -f /lib/systemd/system/votes-serve@node-a.service /lib/systemd/system/votes-serve@node-a.service.d
[ -z "$out" ] || { echo "$out" >&2; fail "systemd-analyze verify of the installed units printed problems"; }
grep -q 'ExecStart=/usr/bin/votes ' /lib/systemd/system/votes-persist.service ||
  fail "the installed units do not run /usr/bin/votes"
echo "test-deb: ${#units[@]} installed units verified"

# The binary, the host check and the default configuration.
/usr/bin/votes --version
/usr/bin/votes tune check >/dev/null || fail "votes tune check failed"
/usr/bin/votes --config /etc/votes/votes.toml serve --help >/dev/null ||
  fail "votes serve refuses the default /etc/votes/votes.toml"
/usr/bin/votes --config /etc/votes/votes.toml config check serve init >"$WORK/check.txt" ||
  fail "votes config check refuses the default /etc/votes/votes.toml"
grep -q '^  snapshot-dir  *\/var\/lib\/votes  *file$' "$WORK/check.txt" ||
  { cat "$WORK/check.txt" >&2; fail "votes config check does not show snapshot-dir from the file"; }
for page in votes votes-serve votes-config-check; do
  [ -s "/usr/share/man/man1/$page.1.gz" ] || fail "no man page $page(1)"
done
grep -q 'votes' /usr/share/bash-completion/completions/votes || fail "no bash completion"

# votes init as the service user, on the local services under a prefix of its own; the flags
# beat the file's replication factor of 3 (one local broker).
prefix="deb-$(date +%s%N | tail -c 9)-"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin VOTES_PREFIX="$prefix" \
  runuser -u votes -- /usr/bin/votes --config /etc/votes/votes.toml init --partitions 2 --replication-factor 1 ||
  fail "votes init from the installed binary failed (are the services up? make services-up)"
echo "test-deb: votes init as user votes created prefix $prefix"

dpkg --purge votes >/dev/null
rm -rf "$WORK"
[ ! -e /usr/bin/votes ] && [ ! -e /var/lib/votes ] && [ ! -e /etc/votes/votes.toml ] &&
  [ ! -e /etc/votes/credentials ] ||
  fail "purge left files behind"
trap - EXIT
echo "test-deb: package installs, verifies, runs and purges cleanly"
