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

step "docs/openapi.yaml is a valid OpenAPI document"
. scripts/python-venv.sh
need_pip openapi-spec-validator==0.9.0
# The validator reports errors on stdout: show them only when it fails.
out=$("$venv/bin/openapi-spec-validator" docs/openapi.yaml 2>&1) || { printf '%s\n' "$out"; exit 1; }

step "deploy/systemd/dynamowave.service passes systemd-analyze verify"
need_apt systemd-analyze systemd
unit_dir=$(mktemp -d)
# verify checks that ExecStart exists: point it at the binary built here.
sed "s|/usr/local/bin/dynamowave|$PWD/target/debug/dynamowave|" deploy/systemd/dynamowave.service >"$unit_dir/dynamowave.service"
cargo build --quiet -p dynamowave
# It prints unknown keys and bad values as warnings with exit code 0: any output fails.
out=$(cd "$unit_dir" && systemd-analyze verify dynamowave.service 2>&1) || true
rm -rf "$unit_dir"
[ -z "$out" ] || { printf '%s\n' "$out"; exit 1; }

step "two wscat users chat as in the AWS tutorial"
cargo build --quiet -p dynamowave
scripts/wscat-chat.sh target/debug/dynamowave

step "hostile input: the Autobahn WebSocket conformance cases (kosoku) against the server"
cargo build --quiet -p dynamowave
scripts/autobahn.sh target/debug/dynamowave

step "hostile input: schemathesis against docs/openapi.yaml and a real server"
scripts/schemathesis.sh target/debug/dynamowave

step "hostile input: the cargo-fuzz target type-checks (it runs on nightly, by hand: fuzz/README.md)"
cargo check --quiet --manifest-path fuzz/Cargo.toml --target-dir target/fuzz-check

step "the chat page in a real browser (headless Chromium)"
scripts/browser-tests.sh
