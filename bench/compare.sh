#!/usr/bin/env bash
# Compares DynamoWave with four ordinary chat servers that speak the same compat protocol (the
# AWS serverless-chat sample; see bench/peers/): uwebsockets, axum-broadcast, node-ws,
# python-websockets.
# Each server is started on a free loopback port, loaded with `dynamowave bench` at every point
# of the list below, and stopped. Raw JSON goes to bench/results/, a Markdown report between the
# markers of docs/benchmarks.md.
#
# Usage: bench/compare.sh [--quick] [--servers LIST] [--point 'NAME|ARGS']... [--skip-build]
#                         [--doc FILE]
#   --quick        tiny points, to test this script; the report then goes to
#                  bench/results/quick-benchmarks.md unless --doc is given
#   --servers      comma-separated subset, in order:
#                  dynamowave,uwebsockets,axum-broadcast,node-ws,python-websockets
#   --point        replaces the point list (repeatable): a name and `dynamowave bench` arguments,
#                  e.g. --point 'fanout-100|fanout --members 100 --senders 5 --rate 10 --duration 5'
#   --skip-build   use the binaries as they are (no cargo build)
#   --doc FILE     where to write the report section (default docs/benchmarks.md)
# Environment:
#   DYNAMOWAVE_BIN           the dynamowave binary (default ${CARGO_TARGET_DIR:-target}/release/dynamowave)
#   AXUM_PEER_BIN            the axum peer (default bench/peers/axum-broadcast/target/release/axum-broadcast,
#                            or under $CARGO_TARGET_DIR when it is set)
#   DYNAMOWAVE_BENCH_CACHE   where the Python venv lives (default ~/.cache/dynamowave/bench)
#   PYTHON_IDLE_CONNECTIONS  connections for the Python peer's idle points (default: as listed)
#   BENCH_PAUSE              seconds between points (default 2)
#   DYNAMOWAVE_EXTRA_ARGS    more `dynamowave serve` arguments, e.g. '--webhook-url http://127.0.0.1:9000/'
#                            to measure the cost of webhooks (split on spaces)
#
# Traffic goes to 127.0.0.1 only. The load generator runs on this machine too and shares its
# cores with the server under test.
set -euo pipefail
cd "$(dirname "$0")/.."

# ---------------------------------------------------------------------------------------------
# The points: "name|scenario and options of `dynamowave bench`" (--url and --json are added).
POINTS=(
    "fanout-1000m-10s-20r|fanout --members 1000 --senders 10 --rate 20 --duration 10"
    "fanout-2000m-20s-20r|fanout --members 2000 --senders 20 --rate 20 --duration 10"
    "saturate-500m-10s-400r|fanout --members 500 --senders 10 --rate 400 --duration 10"
    "connect-5000c-64|connect --connections 5000 --concurrency 64"
    "idle-15000|idle --connections 15000 --hold 10"
)
QUICK_POINTS=(
    "fanout-50m-5s-10r|fanout --members 50 --senders 5 --rate 10 --duration 3"
    "connect-200c-16|connect --connections 200 --concurrency 16"
    "idle-200|idle --connections 200 --hold 2"
)
ALL_SERVERS=(dynamowave uwebsockets axum-broadcast node-ws python-websockets)
# The figures are divided by the fastest peer's (node-ws when uwebsockets is not run).
BASELINE=uwebsockets
# ---------------------------------------------------------------------------------------------

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

quick=0
skip_build=0
doc=""
servers_arg=""
custom_points=()
while [ $# -gt 0 ]; do
    case $1 in
        --quick) quick=1 ;;
        --skip-build) skip_build=1 ;;
        --doc) doc=${2:?--doc needs a file}; shift ;;
        --servers) servers_arg=${2:?--servers needs a list}; shift ;;
        --point) custom_points+=("${2:?--point needs 'NAME|ARGS'}"); shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

if [ ${#custom_points[@]} -gt 0 ]; then
    POINTS=("${custom_points[@]}")
elif [ "$quick" = 1 ]; then
    POINTS=("${QUICK_POINTS[@]}")
fi
for p in "${POINTS[@]}"; do
    [[ $p == *"|"* ]] || { echo "bad point (want 'NAME|ARGS'): $p" >&2; exit 2; }
done

SERVERS=("${ALL_SERVERS[@]}")
if [ -n "$servers_arg" ]; then
    IFS=, read -r -a SERVERS <<<"$servers_arg"
    for s in "${SERVERS[@]}"; do
        [[ " ${ALL_SERVERS[*]} " == *" $s "* ]] || { echo "unknown server: $s" >&2; exit 2; }
    done
fi

[[ " ${SERVERS[*]} " == *" $BASELINE "* ]] || BASELINE=node-ws

if [ -z "$doc" ]; then
    if [ "$quick" = 1 ]; then doc=bench/results/quick-benchmarks.md; else doc=docs/benchmarks.md; fi
fi

TARGET_DIR=${CARGO_TARGET_DIR:-target}
DW_BIN=${DYNAMOWAVE_BIN:-$TARGET_DIR/release/dynamowave}
AXUM_BIN=${AXUM_PEER_BIN:-${CARGO_TARGET_DIR:-bench/peers/axum-broadcast/target}/release/axum-broadcast}
VENV=${DYNAMOWAVE_BENCH_CACHE:-$HOME/.cache/dynamowave/bench}/venv
RESULTS=bench/results
PAUSE=${BENCH_PAUSE:-2}
mkdir -p "$RESULTS"

step() { printf '\n==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }

# Servers and the bench hold up to ~15,000 sockets each; this machine allows 20,000 files.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dynamowave-compare.XXXXXX")
SERVER_PID=""
BENCH_PID=""
cleanup() {
    local rc=$?
    if [ -n "$BENCH_PID" ]; then
        kill -TERM "$BENCH_PID" 2>/dev/null || true
        wait "$BENCH_PID" 2>/dev/null || true
    fi
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# JSON extraction: jq when it is there (installed with apt-get when missing), else python3.
if ! command -v jq >/dev/null 2>&1; then
    step "installing jq"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq) >/dev/null 2>&1 \
        || note "could not install jq; using python3 for JSON"
fi
if command -v jq >/dev/null 2>&1; then HAVE_JQ=1; else HAVE_JQ=0; fi

# jv FILE .path.to.field -> the value, or n/a when the file, the field or its value is missing.
jv() {
    local v
    if [ "$HAVE_JQ" = 1 ]; then
        v=$(jq -r "($2) // \"n/a\" | tostring" "$1" 2>/dev/null) || v=n/a
    else
        v=$(python3 -c '
import json, sys
try:
    v = json.load(open(sys.argv[1]))
    for k in sys.argv[2].strip(".").split("."):
        v = v.get(k) if isinstance(v, dict) else None
except Exception:
    v = None
print("n/a" if v is None or v is False else (json.dumps(v) if isinstance(v, (dict, list)) else v))
' "$1" "$2" 2>/dev/null) || v=n/a
    fi
    [ -n "$v" ] || v=n/a
    printf '%s' "$v"
}

# is_object FILE: the file holds exactly one JSON object.
is_object() {
    if [ "$HAVE_JQ" = 1 ]; then
        [ "$(jq -s 'length == 1 and (.[0] | type == "object")' "$1" 2>/dev/null)" = true ]
    else
        python3 -c 'import json,sys; sys.exit(0 if isinstance(json.load(open(sys.argv[1])), dict) else 1)' "$1" 2>/dev/null
    fi
}

is_num() { [[ $1 =~ ^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]]; }
# fmt VALUE PRINTF-FORMAT [DIVISOR]
fmt() {
    if is_num "$1"; then awk -v v="$1" -v f="$2" -v d="${3:-1}" 'BEGIN { printf f, v / d }'; else printf '%s' "$1"; fi
}
# ms MICROSECONDS -> milliseconds, with more decimals for small values.
ms() {
    if is_num "$1"; then
        awk -v v="$1" 'BEGIN { m = v / 1000; if (m < 1) printf "%.3f", m; else if (m < 100) printf "%.2f", m; else printf "%.0f", m }'
    else printf '%s' "$1"; fi
}
# ratio A B -> "A/B×", or n/a.
ratio() {
    if is_num "$1" && is_num "$2" && awk -v b="$2" 'BEGIN { exit !(b > 0) }'; then
        awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", a / b }'
    else printf 'n/a'; fi
}
# q ARGS... -> the command line, shell-quoted, for the report.
q() { local out; printf -v out '%q ' "$@"; printf '%s' "${out% }"; }

# ---------------------------------------------------------------------------------------------
step "installing what is missing"
COMMANDS=()
run_logged() { # records the command for the report, then runs it
    COMMANDS+=("$(q "$@")")
    "$@"
}

if [ ! -f bench/peers/node-ws/node_modules/ws/package.json ] \
    || [ bench/peers/node-ws/package-lock.json -nt bench/peers/node-ws/node_modules/.package-lock.json ]; then
    note "npm ci (node-ws)"
    (cd bench/peers/node-ws && npm ci --no-audit --no-fund --silent) >&2
fi
COMMANDS+=("# setup (each step runs only when needed)" "(cd bench/peers/node-ws && npm ci)")

if [[ " ${SERVERS[*]} " == *" uwebsockets "* ]]; then
    if [ ! -f bench/peers/uwebsockets/node_modules/uwebsockets/package.json ] \
        || [ bench/peers/uwebsockets/package-lock.json -nt bench/peers/uwebsockets/node_modules/.package-lock.json ]; then
        note "npm ci (uwebsockets)"
        (cd bench/peers/uwebsockets && npm ci --no-audit --no-fund --silent) >&2
    fi
    COMMANDS+=("(cd bench/peers/uwebsockets && npm ci)")
fi

if [ ! -x "$VENV/bin/python" ]; then
    note "python venv at $VENV"
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -r bench/peers/python-websockets/requirements.txt >&2
COMMANDS+=("python3 -m venv $VENV && $VENV/bin/pip install -r bench/peers/python-websockets/requirements.txt")

if [ "$skip_build" = 0 ]; then
    note "cargo build (axum peer, dynamowave)"
    run_logged cargo build --quiet --release --manifest-path bench/peers/axum-broadcast/Cargo.toml >&2
    run_logged cargo build --quiet --release -p dynamowave >&2
else
    COMMANDS+=("# --skip-build: binaries used as they were ($DW_BIN, $AXUM_BIN)")
fi
COMMANDS+=("# servers (one at a time) and points")
[ -x "$DW_BIN" ] || { echo "no dynamowave binary at $DW_BIN" >&2; exit 1; }
"$DW_BIN" bench --help >/dev/null 2>&1 || { echo "$DW_BIN has no 'bench' subcommand" >&2; exit 1; }
if [[ " ${SERVERS[*]} " == *" axum-broadcast "* ]] && [ ! -x "$AXUM_BIN" ]; then
    echo "no axum peer binary at $AXUM_BIN" >&2; exit 1
fi

# ---------------------------------------------------------------------------------------------
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
SERVER_URL=""
SERVER_LOG=""

# start_server NAME: sets SERVER_PID and SERVER_URL; returns non-zero when it does not come up.
start_server() {
    local name=$1 port cmd=()
    port=$(free_port)
    SERVER_LOG="$RESULTS/$STAMP-$name.server.log"
    case $name in
        dynamowave)
            cmd=("$DW_BIN" serve --messages-per-second 0 --max-connections 0 --listen "127.0.0.1:$port" --data-dir "$(mktemp -d "$WORK/dynamowave-data.XXXXXX")")
            # shellcheck disable=SC2206 # split on purpose: a list of arguments
            if [ -n "${DYNAMOWAVE_EXTRA_ARGS:-}" ]; then cmd+=(${DYNAMOWAVE_EXTRA_ARGS}); fi ;;
        uwebsockets) cmd=(env "PORT=$port" node bench/peers/uwebsockets/server.js) ;;
        axum-broadcast) cmd=(env "PORT=$port" "$AXUM_BIN") ;;
        node-ws) cmd=(env "PORT=$port" node bench/peers/node-ws/server.js) ;;
        python-websockets) cmd=(env "PORT=$port" "$VENV/bin/python" bench/peers/python-websockets/server.py) ;;
    esac
    COMMANDS+=("$(q "${cmd[@]}")")
    "${cmd[@]}" >"$WORK/$name.out" 2>>"$SERVER_LOG" &
    SERVER_PID=$!
    SERVER_URL="ws://127.0.0.1:$port/ws"
    for _ in $(seq 1 300); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            wait "$SERVER_PID" 2>/dev/null || true
            SERVER_PID=""
            return 1
        fi
        if [ "$name" = dynamowave ]; then
            grep -qF "$SERVER_URL" "$WORK/$name.out" 2>/dev/null && return 0
        else
            tcp_open "$port" && return 0
        fi
        sleep 0.1
    done
    return 1
}

stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

# Per-server changes to a point's arguments (reported in the tables).
adjust_args() { # server, args -> args
    local server=$1 args=$2
    if [ "$server" = python-websockets ] && [ -n "${PYTHON_IDLE_CONNECTIONS:-}" ] && [[ $args == idle* ]]; then
        args=$(sed -E "s/--connections [0-9]+/--connections $PYTHON_IDLE_CONNECTIONS/" <<<"$args")
    fi
    printf '%s' "$args"
}

# Seconds a point may take before it is killed: its own duration, hold and drain plus headroom.
point_timeout() {
    awk -v a=" $1 " 'BEGIN {
        t = 180
        n = split(a, w, " ")
        for (i = 1; i < n; i++) if (w[i] == "--duration" || w[i] == "--hold" || w[i] == "--drain") t += 2 * w[i + 1]
        printf "%d", t
    }'
}

declare -A STATUS=() FILE=() ARGS_USED=() PROTO=() CPU=()

# CPU time (user + system, every thread) a process has used, in clock ticks.
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo ""; }

# ---------------------------------------------------------------------------------------------
for server in "${SERVERS[@]}"; do
    step "$server"
    if ! start_server "$server"; then
        note "did not start (log: $SERVER_LOG)"
        PROTO[$server]="did not start"
        for p in "${POINTS[@]}"; do
            key="$server|${p%%|*}"
            STATUS[$key]="failed (server did not start)"
        done
        stop_server
        continue
    fi
    note "listening on $SERVER_URL (pid $SERVER_PID)"
    if timeout 20 node bench/peers/check.js "$SERVER_URL" >"$WORK/check.out" 2>&1; then
        PROTO[$server]=ok
    else
        PROTO[$server]="FAILED: $(head -c 300 "$WORK/check.out" | tr '\n|' '  ')"
    fi
    note "protocol check: ${PROTO[$server]}"

    first_point=1
    for p in "${POINTS[@]}"; do
        name=${p%%|*}
        args=$(adjust_args "$server" "${p#*|}")
        ARGS_USED[$server|$name]=$args
        key="$server|$name"
        # Every point gets a freshly started server: memory, queues and connections left over
        # from one point must not count against the next (the idle point's RSS baseline above
        # all).
        if [ "$first_point" = 0 ] || [ -z "$SERVER_PID" ] || ! kill -0 "$SERVER_PID" 2>/dev/null; then
            stop_server
            if ! start_server "$server"; then
                STATUS[$key]="failed (server did not restart)"
                continue
            fi
        fi
        first_point=0
        read -r -a words <<<"$args"
        cmd=("$DW_BIN" bench "${words[0]}" --url "$SERVER_URL" "${words[@]:1}" --json)
        COMMANDS+=("$(q "${cmd[@]}")")
        out="$RESULTS/$STAMP-$server-$name.json"
        log="$RESULTS/$STAMP-$server-$name.log"
        note "$name: $args"
        rc=0
        # The server's CPU over the whole point (connects, warm-up, the measured phase, drain).
        ticks0=$(cpu_ticks "$SERVER_PID")
        # In the background, so that a signal to this script is handled at once (see cleanup).
        timeout -k 10 "$(point_timeout "$args")" "${cmd[@]}" >"$WORK/stdout" 2>"$log" &
        BENCH_PID=$!
        wait "$BENCH_PID" || rc=$?
        BENCH_PID=""
        ticks1=$(cpu_ticks "$SERVER_PID")
        if [ -n "$ticks0" ] && [ -n "$ticks1" ]; then
            CPU[$key]=$(awk -v a="$ticks0" -v b="$ticks1" -v t="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / t }')
        fi
        # The bench prints one JSON object on stdout; keep the last line that is one.
        : >"$out"
        while IFS= read -r line; do
            [[ $line == "{"* ]] || continue
            printf '%s\n' "$line" >"$WORK/line"
            is_object "$WORK/line" && cp "$WORK/line" "$out"
        done <"$WORK/stdout"
        if [ -s "$out" ]; then
            FILE[$key]=$out
            STATUS[$key]=ok
            [ "$rc" = 0 ] || STATUS[$key]="ok (bench exit $rc)"
        else
            cat "$WORK/stdout" >>"$log"
            rm -f "$out"
            case $rc in
                124|137) STATUS[$key]="failed (timed out)" ;;
                *) STATUS[$key]="failed (bench exit $rc, no JSON)" ;;
            esac
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || STATUS[$key]+=", server exited"
        note "-> ${STATUS[$key]}${FILE[$key]:+ ($out)}"
        sleep "$PAUSE"
    done
    stop_server
done

# ---------------------------------------------------------------------------------------------
step "writing the report to $doc"

cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
mem=$(free -g | awk '/^Mem:/ { print $2 }')
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit+=" (with uncommitted changes)"
ver_axum=$(awk '/^name = "axum"$/ { getline; sub(/version = /, ""); gsub(/"/, ""); print; exit }' \
    bench/peers/axum-broadcast/Cargo.lock 2>/dev/null || true)
ver_tokio=$(awk '/^name = "tokio"$/ { getline; sub(/version = /, ""); gsub(/"/, ""); print; exit }' \
    bench/peers/axum-broadcast/Cargo.lock 2>/dev/null || true)
ver_ws=$(node -p 'require("./bench/peers/node-ws/node_modules/ws/package.json").version' 2>/dev/null || echo "?")
ver_uws=$(node -p 'require("./bench/peers/uwebsockets/node_modules/uwebsockets/package.json").version' 2>/dev/null || echo "?")
uws_commit=$(head -c 12 bench/peers/uwebsockets/node_modules/uwebsockets/source_commit 2>/dev/null || echo "?")
ver_node=$(node --version 2>/dev/null || echo "?")
ver_websockets=$("$VENV/bin/python" -c 'import websockets; print(websockets.__version__)' 2>/dev/null || echo "?")
ver_python=$("$VENV/bin/python" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo "?")
ver_rustc=$(rustc --version 2>/dev/null | awk '{ print $2 }' || echo "?")

# cell SERVER POINT: the status when the point did not produce JSON.
failed_cell() { printf '%s' "${STATUS[$1|$2]:-not run}"; }
# args note: when a server ran a point with other arguments than listed.
args_note() {
    local key="$1|$2"
    [ -n "${ARGS_USED[$key]:-}" ] && [ "${ARGS_USED[$key]}" != "$3" ] && printf ' (ran: %s)' "\`${ARGS_USED[$key]}\`"
    return 0
}

section="$WORK/section.md"
{
    echo "## Comparison with other servers"
    echo
    echo "_Generated by \`bench/compare.sh$([ "$quick" = 1 ] && printf ' --quick')\`: $(date -u)._"
    echo
    echo "- Machine: $(nproc) cores (${cpu:-unknown CPU}), ${mem} GiB memory (\`free -g\`), $(uname -sr)."
    echo "- The load generator (\`dynamowave bench\`) runs on the same machine and shares its cores"
    echo "  with the server under test: these numbers compare servers under identical conditions;"
    echo "  they are not the capacity of a dedicated host."
    echo "- Servers, each on its own 127.0.0.1 port, started fresh for this run:"
    for s in "${SERVERS[@]}"; do
        case $s in
            dynamowave) echo "  - **dynamowave**: commit $commit, rustc $ver_rustc, \`serve\` with a fresh temporary \`--data-dir\`, compat protocol." ;;
            uwebsockets) echo "  - **uwebsockets** (\`bench/peers/uwebsockets\`): Node.js $ver_node, uWebSockets.js from the npm package uwebsockets $ver_uws (its source_commit ${uws_commit:-?}), one topic and \`app.publish\` (maxBackpressure 64 MiB)." ;;
            axum-broadcast) echo "  - **axum-broadcast** (\`bench/peers/axum-broadcast\`): axum ${ver_axum:-?}, tokio ${ver_tokio:-?}, one \`tokio::sync::broadcast\` channel (capacity 1024; a lagging client skips messages)." ;;
            node-ws) echo "  - **node-ws** (\`bench/peers/node-ws\`): Node.js $ver_node, ws $ver_ws, \`wss.clients.forEach(send)\`." ;;
            python-websockets) echo "  - **python-websockets** (\`bench/peers/python-websockets\`): Python $ver_python, websockets $ver_websockets, \`websockets.broadcast\`." ;;
        esac
    done
    checks=()
    for s in "${SERVERS[@]}"; do checks+=("$s ${PROTO[$s]:-not run}"); done
    echo "- Protocol check before the points (\`node bench/peers/check.js URL\`: two clients, both"
    joined=$(printf '%s, ' "${checks[@]}")
    echo "  receive both messages): ${joined%, }."
    echo "- Latencies are from send to receipt, measured by the load generator, in milliseconds;"
    echo "  the delivery ratio is deliveries received / deliveries expected (every member gets every"
    echo "  message). \"× $BASELINE\" divides a server's figure by the $BASELINE peer's."
    echo "- Server CPU is the server process's user + system time (every thread, \`/proc/PID/stat\`)"
    echo "  over the whole point: connecting, warm-up, the measured phase and the drain; per delivery"
    echo "  it is that time divided by the deliveries received."
    echo "- Raw results: \`bench/results/$STAMP-<server>-<point>.json\` (not committed)."
    echo
    echo "Commands run:"
    echo
    echo '```sh'
    printf '%s\n' "${COMMANDS[@]}"
    echo '```'
    for p in "${POINTS[@]}"; do
        name=${p%%|*}
        args=${p#*|}
        scenario=${args%% *}
        echo
        echo "### $name: \`$args\`"
        echo
        case $scenario in
            connect)
                echo "| server | connects/s | handshake p50 | p99 | max (ms) | connect failures | errors | connects/s × $BASELINE |"
                echo "|---|---:|---:|---:|---:|---:|---:|---:|"
                base=""
                [ -n "${FILE[$BASELINE|$name]:-}" ] && base=$(jv "${FILE[$BASELINE|$name]}" .connects_per_sec)
                for s in "${SERVERS[@]}"; do
                    f=${FILE[$s|$name]:-}
                    if [ -z "$f" ]; then echo "| $s$(args_note "$s" "$name" "$args") | $(failed_cell "$s" "$name") | | | | | | |"; continue; fi
                    cps=$(jv "$f" .connects_per_sec)
                    echo "| $s$(args_note "$s" "$name" "$args") | $(fmt "$cps" %.0f) | $(ms "$(jv "$f" .latency_us.p50)") | $(ms "$(jv "$f" .latency_us.p99)") | $(ms "$(jv "$f" .latency_us.max)") | $(jv "$f" .connect_failures) | $(jv "$f" .errors) | $(ratio "$cps" "${base:-n/a}") |"
                done
                ;;
            idle)
                echo "| server | connections | server RSS (MiB) | RSS per connection (KiB) | connect failures | errors | RSS/connection × $BASELINE (lower is better) |"
                echo "|---|---:|---:|---:|---:|---:|---:|"
                base=""
                [ -n "${FILE[$BASELINE|$name]:-}" ] && base=$(jv "${FILE[$BASELINE|$name]}" .rss_per_connection_bytes)
                for s in "${SERVERS[@]}"; do
                    f=${FILE[$s|$name]:-}
                    if [ -z "$f" ]; then echo "| $s$(args_note "$s" "$name" "$args") | $(failed_cell "$s" "$name") | | | | | |"; continue; fi
                    per=$(jv "$f" .rss_per_connection_bytes)
                    echo "| $s$(args_note "$s" "$name" "$args") | $(jv "$f" .connections) | $(fmt "$(jv "$f" .server_rss_bytes)" %.1f 1048576) | $(fmt "$per" %.1f 1024) | $(jv "$f" .connect_failures) | $(jv "$f" .errors) | $(ratio "$per" "${base:-n/a}") |"
                done
                ;;
            *)
                echo "| server | deliveries/s | delivery ratio | p50 | p99 | p999 | max (ms) | errors (connect failures) | server CPU (s) | CPU per delivery (µs) | deliveries/s × $BASELINE |"
                echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
                base=""
                [ -n "${FILE[$BASELINE|$name]:-}" ] && base=$(jv "${FILE[$BASELINE|$name]}" .deliveries_per_sec)
                for s in "${SERVERS[@]}"; do
                    f=${FILE[$s|$name]:-}
                    if [ -z "$f" ]; then echo "| $s$(args_note "$s" "$name" "$args") | $(failed_cell "$s" "$name") | | | | | | | | | |"; continue; fi
                    dps=$(jv "$f" .deliveries_per_sec)
                    cpu_s=${CPU[$s|$name]:-}
                    per_delivery=$(awk -v c="$cpu_s" -v d="$(jv "$f" .delivered)" 'BEGIN { if (c != "" && d > 0) printf "%.2f", c * 1e6 / d; else printf "n/a" }')
                    echo "| $s$(args_note "$s" "$name" "$args") | $(fmt "$dps" %.0f) | $(fmt "$(jv "$f" .delivery_ratio)" %.4f) | $(ms "$(jv "$f" .latency_us.p50)") | $(ms "$(jv "$f" .latency_us.p99)") | $(ms "$(jv "$f" .latency_us.p999)") | $(ms "$(jv "$f" .latency_us.max)") | $(jv "$f" .errors) ($(jv "$f" .connect_failures)) | ${cpu_s:-n/a} | $per_delivery | $(ratio "$dps" "${base:-n/a}") |"
                done
                ;;
        esac
        for s in "${SERVERS[@]}"; do
            st=${STATUS[$s|$name]:-}
            [ -n "${FILE[$s|$name]:-}" ] && [ "$st" != ok ] && echo && echo "Note: $s: $st."
        done
    done
} >"$section"

# Replace what is between the markers (creating the file, or the markers, when missing).
mkdir -p "$(dirname "$doc")"
if [ ! -f "$doc" ]; then
    printf '# Benchmarks\n\n<!-- compare:begin -->\n<!-- compare:end -->\n' >"$doc"
elif ! grep -qF '<!-- compare:begin -->' "$doc" || ! grep -qF '<!-- compare:end -->' "$doc"; then
    printf '\n<!-- compare:begin -->\n<!-- compare:end -->\n' >>"$doc"
fi
awk -v section="$section" '
    /<!-- compare:begin -->/ { print; while ((getline line < section) > 0) print line; skip = 1; next }
    /<!-- compare:end -->/ { skip = 0 }
    !skip { print }
' "$doc" >"$WORK/doc.md"
cat "$WORK/doc.md" >"$doc"

failed=0
for s in "${SERVERS[@]}"; do
    for p in "${POINTS[@]}"; do [[ ${STATUS[$s|${p%%|*}]:-} == ok* ]] || failed=$((failed + 1)); done
done
echo "report: $doc; raw results: $RESULTS/$STAMP-*.json; points failed: $failed" >&2
