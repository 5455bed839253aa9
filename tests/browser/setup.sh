#!/usr/bin/env bash
# What the browser suite (tests/browser) needs on a Debian machine, as root: Debian's
# chromium, chromium-driver and libnss3-tools (installed only when missing; never a browser
# download), the Chromium policy that chooses a test's client certificate without a dialog,
# and axe-core from the npm registry (pinned) under target/axe. Prints the path to export
# as TRM_AXE_JS. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/../.."

AXE_VERSION=4.10.3
POLICY=/etc/chromium/policies/managed/trm-console-tests.json

missing=()
for package in chromium chromium-driver libnss3-tools; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$package")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Chromium reads managed policies only from /etc: for https://127.0.0.1 (any port), the
# certificate issued by a TRM CA (the suite's NSS databases hold at most one).
install -D -m 0644 tests/browser/chromium-policy.json "$POLICY"

axe=target/axe/node_modules/axe-core
if ! grep -qs "\"version\": \"$AXE_VERSION\"" "$axe/package.json"; then
    npm install --silent --no-save --no-package-lock --no-audit --no-fund \
        --prefix target/axe "axe-core@$AXE_VERSION" >/dev/null
fi
test -s "$axe/axe.min.js"
echo "$PWD/$axe/axe.min.js"
