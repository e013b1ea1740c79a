# Sourced by scripts that need Python tools: the virtualenv test.sh also uses for
# openapi-spec-validator, created when missing, and `need_pip NAME==VERSION`, which installs
# that exact version into it when it is not there.
venv="${XDG_CACHE_HOME:-$HOME/.cache}/dynamowave/venv"
if [ ! -x "$venv/bin/pip" ]; then
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        echo "installing python3-venv"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv) >/dev/null
        python3 -m venv "$venv"
    fi
fi

need_pip() { # NAME==VERSION
    "$venv/bin/python" - "$1" >/dev/null 2>&1 <<'PY' && return
import sys, importlib.metadata as m
name, version = sys.argv[1].split("==")
sys.exit(m.version(name) != version)
PY
    echo "installing $1 into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "$1" >/dev/null
}
