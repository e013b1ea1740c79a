#!/usr/bin/env bash
# Browser tests of the chat page (web-tests/): real headless Chromium, driven by playwright-core,
# against the real server binary. Builds nothing: run `cargo build -p dynamowave` first (or set
# DYNAMOWAVE_BIN). Installs Chromium (Debian's package) and the tests' npm packages when missing.
# Works as root with no TTY and no display. Screenshots go to test-output/.
set -euo pipefail
cd "$(dirname "$0")/.."

export DYNAMOWAVE_BIN=${DYNAMOWAVE_BIN:-target/debug/dynamowave}
if [ ! -x "$DYNAMOWAVE_BIN" ]; then
    echo "no server binary at $DYNAMOWAVE_BIN: run 'cargo build -p dynamowave' first" >&2
    exit 1
fi

apt_install() { # packages...
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing $* (apt)"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

[ -x /usr/bin/chromium ] || apt_install chromium
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi

# npm ci when playwright-core is missing or not the pinned version.
pinned=$(node -p 'require("./web-tests/package.json").dependencies["playwright-core"]')
installed=$(node -p 'try { require("./web-tests/node_modules/playwright-core/package.json").version } catch { "" }')
if [ "$installed" != "$pinned" ]; then
    echo "installing the tests' npm packages (npm ci: playwright-core $pinned)"
    (cd web-tests && npm ci --no-audit --no-fund --loglevel=error)
fi

mkdir -p test-output
echo "$(/usr/bin/chromium --version 2>/dev/null || echo 'Chromium: version unknown'); node $(node --version)"

# The spec reporter lists failures after its summary; print the summary again so that it ends
# the output whatever happened. The files are listed (not the directory) for Node 21 and later.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
node --test --test-reporter=spec web-tests/*.test.js 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
if grep -q '^✖ failing tests:' "$log"; then
    echo
    grep -E '^ℹ (tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) ' "$log" || true
fi
exit "$status"
