#!/usr/bin/env bash
# schemathesis (PyPI) against docs/openapi.yaml and a real `dynamowave serve` on 127.0.0.1:0
# with a fresh data directory: every check (`--checks all`: no 5xx, status codes, content
# types, response schemas and headers, negative data rejected, positive data accepted,
# unsupported methods refused, ...) on generated requests, for every operation. Two passes: the default
# server (loopback clients need no token), then one with `--admin-token`, every request
# carrying it (the spec makes the token optional, so schemathesis' auth checks do not send
# requests without it: the 401s are tested in crates/server/src/api/auth.rs). Settings:
# scripts/schemathesis.toml and scripts/schemathesis_hooks.py.
# Usage: scripts/schemathesis.sh [path/to/dynamowave]
#   SCHEMATHESIS_MAX_EXAMPLES (default 100) bounds the test cases per operation and phase of
#   the first pass (the second runs a third as many); SCHEMATHESIS_SEED reproduces a run (the
#   report of a failing run prints its seed).
# Quiet on success (a summary line); on failure it prints schemathesis' report (with a curl
# command per failure) and the end of the server's log. Installs schemathesis when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
BIN=${1:-target/debug/dynamowave}
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-100}
# shellcheck source=scripts/python-venv.sh
. scripts/python-venv.sh
need_pip "schemathesis==$SCHEMATHESIS_VERSION"
# Hypothesis' caches (unicode tables) beside the venv, not in the working tree.
export HYPOTHESIS_STORAGE_DIRECTORY="${XDG_CACHE_HOME:-$HOME/.cache}/dynamowave/hypothesis"

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

fail() { # pass, lines...
    local pass=$1
    shift
    printf '%s\n' "$@"
    echo "--- server log of the $pass pass (last 30 lines)"
    tail -30 "$work/$pass/server.err"
    echo "schemathesis: 0 passed, 1 failed"
    exit 1
}

total_cases=0
total_operations=0
seeds=()
run_pass() { # name, max examples, extra server args...
    local pass=$1 examples=$2
    shift 2
    local dir="$work/$pass" token="" prev=""
    mkdir -p "$dir"
    for arg in "$@"; do
        if [ "$prev" = --admin-token ]; then token=$arg; fi
        prev=$arg
    done
    local auth=()
    [ -n "$token" ] && auth=(-H "Authorization: Bearer $token")

    "$BIN" serve --listen 127.0.0.1:0 --data-dir "$dir/data" --messages-per-second 0 "$@" \
        >"$dir/server.out" 2>"$dir/server.err" &
    local server_pid=$!
    pids+=("$server_pid")
    for _ in $(seq 1 100); do grep -q "ws://" "$dir/server.out" 2>/dev/null && break; sleep 0.05; done
    local addr
    addr=$(grep -o 'ws://[0-9.:]*/ws' "$dir/server.out" | head -1 | sed 's|^ws://||; s|/ws$||')
    [ -n "$addr" ] || fail "$pass" "the server did not start"

    # One live connection (compat mode, in `general`), its id found through the API itself.
    "$venv/bin/python" scripts/ws_sink.py "ws://$addr/ws?name=schemathesis-peer" >"$dir/peer.out" 2>&1 &
    pids+=($!)
    local live=""
    for _ in $(seq 1 100); do
        live=$("$venv/bin/python" - "http://$addr/rooms/general/members" "$token" <<'PY' 2>/dev/null || true
import json, sys, urllib.request
request = urllib.request.Request(sys.argv[1])
if sys.argv[2]:
    request.add_header("Authorization", f"Bearer {sys.argv[2]}")
members = json.load(urllib.request.urlopen(request, timeout=5))["members"]
print(next(m["connectionId"] for m in members if m["user"] == "schemathesis-peer"))
PY
        )
        [ -n "$live" ] && break
        sleep 0.05
    done
    [ -n "$live" ] || fail "$pass" "the WebSocket peer did not connect" "$(cat "$dir/peer.out")"

    local seed=()
    [ -n "${SCHEMATHESIS_SEED:-}" ] && seed=(--seed "$SCHEMATHESIS_SEED")
    local status=0
    DYNAMOWAVE_LIVE_CONNECTION=$live SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH=scripts PYTHONDONTWRITEBYTECODE=1 \
        timeout 600 "$venv/bin/schemathesis" --config-file scripts/schemathesis.toml --no-color \
        run docs/openapi.yaml --url "http://$addr" --checks all --max-examples "$examples" \
        --request-timeout 10 "${auth[@]}" "${seed[@]}" >"$dir/run.out" 2>&1 || status=$?
    [ "$status" = 124 ] && fail "$pass" "$(cat "$dir/run.out")" "schemathesis timed out after 600 s"
    [ "$status" = 0 ] || fail "$pass" "$(cat "$dir/run.out")"
    # A panic in a handler may not show as a failed request (the connection just drops).
    if grep -q "panicked" "$dir/server.err"; then
        fail "$pass" "the server panicked during the run:" "$(grep -A5 panicked "$dir/server.err" | head -40)"
    fi
    kill -0 "$server_pid" 2>/dev/null || fail "$pass" "the server exited during the run"

    local operations cases
    operations=$(grep -o 'Tested: [0-9]*' "$dir/run.out" | grep -o '[0-9]*' || echo 0)
    cases=$(grep -o '[0-9]* generated' "$dir/run.out" | grep -o '[0-9]*' || echo 0)
    total_operations=$((total_operations + operations))
    total_cases=$((total_cases + cases))
    seeds+=("$pass $(grep -o 'Seed: [0-9]*' "$dir/run.out" | grep -o '[0-9]*' || true)")
}

run_pass loopback "$MAX_EXAMPLES"
run_pass admin-token $(((MAX_EXAMPLES + 2) / 3)) --admin-token "schemathesis-$(date +%s)-admin-token"

echo "schemathesis ($total_cases test cases, --checks all, --max-examples $MAX_EXAMPLES; seeds: ${seeds[*]}):"
echo "schemathesis: $total_operations passed, 0 failed"
