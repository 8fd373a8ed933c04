#!/usr/bin/env bash
# `make deb`: a Debian package of the appliance, built with dpkg-deb from an optimized build.
#   /usr/bin/votes                      the binary (the `ship` profile of Cargo.toml)
#   /lib/systemd/system/votes-*         the units of systemd/ (installed, not enabled)
#   /etc/votes/votes.toml, votes.env    the default configuration (conffiles; votes.env 0640)
#   /usr/share/votes/ops/               Prometheus rules and scrape config, Grafana dashboard
#   /usr/share/man/man1/votes*.1.gz     man pages; bash and zsh completions
#   /usr/share/doc/votes/               README, ARCHITECTURE, docs/, copyright
# postinst creates the `votes` system user and /var/lib/votes. Prints the package's path.
# Usage: scripts/package-deb.sh [OUT_DIR]   (default $CARGO_TARGET_DIR/deb)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/votes-target}
TARGET=$CARGO_TARGET_DIR
OUT=${1:-$TARGET/deb}
log() { echo "package-deb: $*" >&2; }
for tool in dpkg-deb dpkg-shlibdeps; do
  command -v $tool >/dev/null && continue
  command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] ||
    { echo "error: $tool not found (Debian: apt-get install -y dpkg-dev)" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends dpkg-dev >/dev/null
done
cd "$ROOT"
log "building the votes binary (profile ship)"
cargo build --profile ship -p votes --bin votes >&2
BIN=$TARGET/ship/votes
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ARCH=$(dpkg --print-architecture)
NAME=votes_${VERSION}_${ARCH}
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
PKG=$STAGE/$NAME
install -d "$PKG/DEBIAN" "$PKG/usr/bin" "$PKG/lib/systemd/system" "$PKG/etc/votes" \
  "$PKG/usr/share/votes/ops" "$PKG/usr/share/doc/votes"
install -m 0755 "$BIN" "$PKG/usr/bin/votes"
cp -r systemd/. "$PKG/lib/systemd/system/"
find "$PKG/lib/systemd/system" -type f -exec chmod 0644 {} +
sed -i 's#/usr/local/bin/votes#/usr/bin/votes#g' "$PKG"/lib/systemd/system/*.service
install -m 0644 packaging/deb/votes.toml "$PKG/etc/votes/votes.toml"
install -m 0640 packaging/deb/votes.env "$PKG/etc/votes/votes.env"
cp -r ops/. "$PKG/usr/share/votes/ops/"
# Man pages and shell completions, generated from the CLI definition of the binary shipped.
install -d "$PKG/usr/share/man/man1" "$PKG/usr/share/bash-completion/completions" \
  "$PKG/usr/share/zsh/vendor-completions"
"$BIN" man --out "$PKG/usr/share/man/man1" 2>/dev/null
gzip -9n "$PKG"/usr/share/man/man1/*.1
"$BIN" completions bash >"$PKG/usr/share/bash-completion/completions/votes"
"$BIN" completions zsh >"$PKG/usr/share/zsh/vendor-completions/_votes"
cp -r README.md ARCHITECTURE.md docs "$PKG/usr/share/doc/votes/"
cat >"$PKG/usr/share/doc/votes/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: votes
License: Apache-2.0

Files: *
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPY
install -m 0755 packaging/deb/postinst packaging/deb/postrm packaging/deb/prerm "$PKG/DEBIAN/"
printf '/etc/votes/votes.toml\n/etc/votes/votes.env\n' >"$PKG/DEBIAN/conffiles"
# Library dependencies from what the binary links (dpkg-shlibdeps wants a debian/control).
mkdir -p "$STAGE/debian"
printf 'Source: votes\n\nPackage: votes\nArchitecture: any\n' >"$STAGE/debian/control"
DEPENDS=$(cd "$STAGE" && dpkg-shlibdeps -O "$NAME/usr/bin/votes" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$DEPENDS" ] || { echo "error: dpkg-shlibdeps found no dependencies of the binary" >&2; exit 1; }
SIZE=$(du -sk "$PKG" | cut -f1)
cat >"$PKG/DEBIAN/control" <<CONTROL
Package: votes
Version: $VERSION
Architecture: $ARCH
Maintainer: votes developers <votes@localhost>
Installed-Size: $SIZE
Depends: $DEPENDS, adduser
Section: net
Priority: optional
Homepage: https://localhost/votes
Description: real-time voting appliance on Kafka, DynamoDB and Redis
 A thread-per-core ingest-and-tally appliance: one vote per voter, no acknowledged
 vote lost, live results, and an official result auditors can recompute.
 Units: votes-serve@<node>, votes-persist, votes-init, votes-recount.timer;
 configuration in /etc/votes; operations guide in /usr/share/doc/votes/docs.
CONTROL
mkdir -p "$OUT"
dpkg-deb --root-owner-group --build "$PKG" "$OUT/$NAME.deb" >&2
log "built $(du -h "$OUT/$NAME.deb" | cut -f1) package"
echo "$OUT/$NAME.deb"
