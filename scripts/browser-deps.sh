#!/usr/bin/env bash
# Browser tooling for the console's integration tests: Debian's chromium
# and chromium-driver (installed with apt-get when missing and running as
# root), and playwright-core at the version pinned in
# tests/browser/package.json, installed with `npm ci` into
# tests/browser/node_modules when missing or when package-lock.json changed
# (a copy of the lock in node_modules is the stamp). playwright-core drives
# /usr/bin/chromium; it never downloads a browser.
# Run by scripts/deps.sh.
set -euo pipefail

need=()
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || [ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing: ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "missing programs for the browser tests; install (Debian): ${need[*]}" >&2
        exit 1
    fi
fi

dir="$(cd "$(dirname "$0")/../tests/browser" && pwd)"
stamp="$dir/node_modules/.package-lock.stamp"
if [ ! -d "$dir/node_modules/playwright-core" ] || ! cmp -s "$dir/package-lock.json" "$stamp"; then
    echo "installing: playwright-core ($(sed -n 's/.*"playwright-core": *"\([^"]*\)".*/\1/p' "$dir/package.json" | head -1)) into tests/browser/node_modules"
    (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --silent --no-audit --no-fund)
    cp "$dir/package-lock.json" "$stamp"
fi
