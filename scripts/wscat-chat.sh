#!/usr/bin/env bash
# Two wscat users chat through `dynamowave serve`, exactly as in the AWS tutorial:
#   wscat -c ws://127.0.0.1:PORT/ws   then   {"action":"sendmessage","message":"hello"}
# Usage: scripts/wscat-chat.sh [path/to/dynamowave]   (installs wscat from npm when missing)
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${1:-target/debug/dynamowave}
NPM_PREFIX=${DYNAMOWAVE_NPM_CACHE:-$HOME/.cache/dynamowave/npm}
WSCAT="$NPM_PREFIX/node_modules/.bin/wscat"
if [ ! -x "$WSCAT" ]; then
    echo "installing wscat into $NPM_PREFIX"
    npm install --silent --no-audit --no-fund --prefix "$NPM_PREFIX" wscat@6 >/dev/null
fi

work=$(mktemp -d)
cleanup() { [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

"$BIN" serve --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
for _ in $(seq 1 100); do grep -q "ws://" "$work/server.out" 2>/dev/null && break; sleep 0.05; done
url=$(grep -o 'ws://[0-9.:]*/ws' "$work/server.out" | head -1)
[ -n "$url" ] || { echo "server did not start"; cat "$work/server.err"; exit 1; }

# Alice and Bob connect; Bob says hello with the tutorial's "message" key, Alice answers with
# the sample's "data" key. wscat only prints what it receives on a terminal, so each runs under
# `script` (a pseudo-terminal); it prints each received frame as "< text".
chat() { # name, delay before sending, frame, time to stay
    (sleep "$2"; echo "$3"; sleep "$4") | script -qfc "$WSCAT --no-color -c $url" /dev/null >"$work/$1.out" 2>&1
}
chat bob 0.7 '{"action":"sendmessage","message":"hello from bob"}' 2.5 &
bob=$!
chat alice 1.5 '{"action":"sendmessage","data":"hi bob, alice here"}' 1.7 &
alice=$!
wait "$alice" "$bob" || true

fail=0
expect() { grep -q -- "$2" "$work/$1.out" || { echo "FAIL: $1 did not receive: $2"; cat "$work/$1.out"; fail=1; }; }
expect alice "< hello from bob"
expect alice "< hi bob, alice here"
expect bob "< hello from bob"
expect bob "< hi bob, alice here"
if [ "$fail" = 0 ]; then
    echo "wscat chat: 1 passed, 0 failed"
else
    echo "wscat chat: 0 passed, 1 failed"
    exit 1
fi
