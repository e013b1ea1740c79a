#!/usr/bin/env bash
# Every check CI runs (.ci/run calls this). Installs what it needs when it is missing.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s\n' "$*"; }

need_apt() { # command, package
    command -v "$1" >/dev/null 2>&1 && return
    step "installing $2"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2") >/dev/null
}
need_apt script bsdutils
need_apt npm npm

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets -- -D warnings

step "tests"
cargo test --workspace

step "two wscat users chat as in the AWS tutorial"
cargo build --quiet -p dynamowave
scripts/wscat-chat.sh target/debug/dynamowave

step "the chat page in a real browser (headless Chromium)"
scripts/browser-tests.sh
