#!/usr/bin/env bash
# The whole AWS shape on this machine, in the foreground until interrupted:
#
#   deploy/aws/run-local.sh PORT [emulate-aws flags...]
#
# builds the handler and the tools, starts moto (the DynamoDB and SQS emulator, from PyPI,
# installed when missing) on a free port, creates the tables and the dead-letter queue as the
# template does, and runs `dynamowave emulate-aws` on 127.0.0.1:PORT: a local API Gateway that
# runs the handler binary, unchanged, through the Lambda Runtime API. Then, as in the AWS
# tutorial:
#
#   npx wscat -c ws://127.0.0.1:PORT/production
#   > {"action":"sendmessage","message":"hello, everyone!"}
#
# DYNAMOWAVE_PROFILE=debug uses debug builds (faster to build; ./test.sh does). The moto
# endpoint, table names and DLQ_URL are printed, for `dynamowave-aws dlq list|replay` in
# another shell. See docs/aws.md ("The local loop").
set -euo pipefail
port="${1:?usage: deploy/aws/run-local.sh PORT [emulate-aws flags...]}"
shift
cd "$(dirname "$0")/../.."

profile="${DYNAMOWAVE_PROFILE:-release}"
case "$profile" in
    release) cargo_flags=(--release) ;;
    debug) cargo_flags=() ;;
    *) echo "run-local.sh: DYNAMOWAVE_PROFILE must be release or debug" >&2; exit 2 ;;
esac
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/$profile"

echo "== building the handler, the operator tools and the local API Gateway ($profile)" >&2
# One package at a time: built together, their features unify and every dependency rebuilds.
cargo build --quiet "${cargo_flags[@]}" -p dynamowave-lambda
cargo build --quiet "${cargo_flags[@]}" -p dynamowave

. scripts/python-venv.sh
if [ ! -x "$venv/bin/moto_server" ]; then
    echo "installing moto[server] into $venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.6' >/dev/null
fi

moto_port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$venv/bin/python" deploy/aws/moto_server.py -H 127.0.0.1 -p "$moto_port" >/dev/null 2>&1 &
moto_pid=$!
gateway_pid=
cleanup() {
    [ -n "$gateway_pid" ] && kill "$gateway_pid" 2>/dev/null && wait "$gateway_pid" 2>/dev/null
    kill "$moto_pid" 2>/dev/null && wait "$moto_pid" 2>/dev/null
    true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$moto_port") 2>/dev/null && break
    kill -0 "$moto_pid" 2>/dev/null || { echo "run-local.sh: moto did not start" >&2; exit 1; }
    sleep 0.1
done

# What the handler processes and dynamowave-aws read (the template sets the same on AWS).
export AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port"
export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-local}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-local}"
export CONNECTIONS_TABLE="${CONNECTIONS_TABLE:-dynamowave-connections}"
export MESSAGES_TABLE="${MESSAGES_TABLE:-dynamowave-messages}"
export MESSAGE_IDS_TABLE="${MESSAGE_IDS_TABLE:-dynamowave-message-ids}"
export READ_POSITIONS_TABLE="${READ_POSITIONS_TABLE:-dynamowave-read-positions}"
DLQ_URL=$("$target_dir/dynamowave-aws" create-tables --dlq dynamowave-dlq)
export DLQ_URL
echo "== moto (DynamoDB, SQS) on $AWS_ENDPOINT_URL; tables $CONNECTIONS_TABLE, $MESSAGES_TABLE, $MESSAGE_IDS_TABLE, $READ_POSITIONS_TABLE; DLQ_URL=$DLQ_URL" >&2
# One line a script can read (the end-to-end test does): the environment dynamowave-aws needs.
echo "== env: AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL AWS_REGION=$AWS_REGION AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY DLQ_URL=$DLQ_URL" >&2
echo "== in another shell, with that environment: $target_dir/dynamowave-aws dlq list" >&2

"$target_dir/dynamowave" emulate-aws \
    --listen "127.0.0.1:$port" \
    --stage production \
    --handler "$target_dir/dynamowave-lambda" \
    "$@" &
gateway_pid=$!
wait "$gateway_pid"
