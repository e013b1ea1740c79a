#!/usr/bin/env bash
# Fan-out to one room of MEMBERS connections on the local AWS shape: the original's sequential
# posts (DYNAMOWAVE_FANOUT_CONCURRENCY=1) against bounded-concurrent ones (64, the default).
#
#   deploy/aws/fanout-bench.sh [MEMBERS] [MESSAGES]      (defaults: 1000 members, 5 messages)
#
# For each setting it starts deploy/aws/run-local.sh (release builds, fresh moto), connects
# MEMBERS compat clients with `dynamowave bench fanout`, sends MESSAGES messages from one of
# them, and prints the bench's JSON report: latency from send to each delivery, so the largest
# is one sendmessage invocation's fan-out time. docs/aws.md ("Fan-out") has the figures.
set -euo pipefail
members="${1:-1000}"
messages="${2:-5}"
cd "$(dirname "$0")/../.."
cargo build --quiet --release -p dynamowave-lambda
cargo build --quiet --release -p dynamowave
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for concurrency in 1 64; do
    port=$(free_port)
    log=$(mktemp)
    DYNAMOWAVE_FANOUT_CONCURRENCY=$concurrency RUST_LOG=warn \
        deploy/aws/run-local.sh "$port" --concurrency 8 >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do grep -q "ws://" "$log" && break; sleep 0.1; done
    grep -q "ws://" "$log" || { cat "$log" >&2; kill "$pid"; exit 1; }
    echo "== DYNAMOWAVE_FANOUT_CONCURRENCY=$concurrency, $members members, $messages messages"
    # Paced far below what the fan-out takes, so messages do not queue behind each other;
    # 16 handshakes in flight, as the emulator runs 8 \$connect invocations at a time and each
    # one writes to DynamoDB (more only makes clients time out in the queue).
    target/release/dynamowave bench fanout --url "ws://127.0.0.1:$port/production" \
        --protocol compat --members "$members" --senders 1 --rate 0.2 --concurrency 16 \
        --duration "$((messages * 5))" --drain 60 --json
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -f "$log"
done
