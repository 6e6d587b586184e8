#!/usr/bin/env bash
# Vendors the asciinema-player browser bundle into
# crates/console/assets/vendor/asciinema-player/ (embedded into the binary
# with include_bytes!, so building gatehouse never needs Node).
#
# Fetches the npm package at the pinned version with `npm pack` into a
# temporary directory (no node_modules is created), checks the tarball's
# sha256 and copies the monolithic minified bundle (defines the global
# AsciinemaPlayer), its stylesheet and the licence, and writes VERSION.
#
# To update: set VERSION below, run with SHA256= (empty) once to see the
# new tarball's hash, put it in SHA256, run again and commit the result.
set -euo pipefail

VERSION=3.18.0
SHA256=${SHA256-18d9703510fae9209da9e26ce3d13c59f083b4abcff003a3bba958e03918a862}

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/crates/console/assets/vendor/asciinema-player"

command -v npm >/dev/null || { echo "vendor-assets.sh: npm is needed (apt-get install npm)" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent "asciinema-player@$VERSION" >/dev/null)
tgz="$tmp/asciinema-player-$VERSION.tgz"
[ -f "$tgz" ] || { echo "vendor-assets.sh: npm pack did not produce $tgz" >&2; exit 1; }
sum="$(sha256sum "$tgz" | cut -d' ' -f1)"
if [ -z "$SHA256" ]; then
    echo "asciinema-player $VERSION tarball sha256: $sum (put it in SHA256 and run again)"
    exit 0
fi
if [ "$sum" != "$SHA256" ]; then
    echo "vendor-assets.sh: sha256 mismatch for asciinema-player-$VERSION.tgz: got $sum, want $SHA256" >&2
    exit 1
fi

tar -xzf "$tgz" -C "$tmp"
pkg="$tmp/package"
got="$(node -p 'require(process.argv[1]).version' "$pkg/package.json" 2>/dev/null || sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' "$pkg/package.json" | head -1)"
[ "$got" = "$VERSION" ] || { echo "vendor-assets.sh: package.json says $got, want $VERSION" >&2; exit 1; }
grep -q 'var AsciinemaPlayer=' "$pkg/dist/bundle/asciinema-player.min.js" \
    || { echo "vendor-assets.sh: dist/bundle/asciinema-player.min.js does not define AsciinemaPlayer" >&2; exit 1; }

mkdir -p "$dest"
install -m 0644 "$pkg/dist/bundle/asciinema-player.min.js" "$dest/asciinema-player.min.js"
install -m 0644 "$pkg/dist/bundle/asciinema-player.css" "$dest/asciinema-player.css"
install -m 0644 "$pkg/LICENSE" "$dest/LICENSE"
printf 'asciinema-player %s\nnpm tarball asciinema-player-%s.tgz sha256 %s\n' "$VERSION" "$VERSION" "$sum" > "$dest/VERSION"
echo "vendored asciinema-player $VERSION into ${dest#"$root"/}"
