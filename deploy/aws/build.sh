#!/usr/bin/env bash
# Builds the Lambda handler (`dynamowave-lambda`) for the provided.al2023 runtime and zips it as
# `bootstrap` into deploy/aws/dist/dynamowave-lambda.zip, the template's CodeUri.
#
#   deploy/aws/build.sh [--arch x86_64|arm64]
#
# Amazon Linux 2023 ships glibc 2.34, older than this machine's, so the binary is linked with
# cargo-zigbuild against glibc 2.34 (`--target <triple>.2.34`), then checked with `objdump -T`:
# no dynamic symbol may need a GLIBC version newer than 2.34. Exits non-zero on any failure.
# See docs/aws.md ("Build").
set -euo pipefail

GLIBC_MAX=2.34
CARGO_ZIGBUILD_VERSION=0.24.1
ZIGLANG_VERSION=0.17.1

arch=x86_64
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch="${2:?--arch needs x86_64 or arm64}"; shift 2 ;;
        --arch=*) arch="${1#--arch=}"; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$arch" in
    x86_64) triple=x86_64-unknown-linux-gnu ;;
    arm64|aarch64) arch=arm64; triple=aarch64-unknown-linux-gnu ;;
    *) echo "build.sh: --arch must be x86_64 or arm64, not $arch" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

if ! rustup target list --installed | grep -qx "$triple"; then
    echo "build.sh: Rust target $triple is not installed: rustup target add $triple" >&2
    exit 1
fi

# cargo-zigbuild and zig (the ziglang wheel, run as `python -m ziglang`) from the repo's venv.
. scripts/python-venv.sh
need_pip "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION"
need_pip "ziglang==$ZIGLANG_VERSION"
export PATH="$venv/bin:$PATH"

if ! command -v objdump >/dev/null 2>&1; then
    echo "installing binutils (objdump)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binutils) >/dev/null
fi

echo "== cargo zigbuild --release -p dynamowave-lambda --bin dynamowave-lambda --target $triple.$GLIBC_MAX"
cargo zigbuild --release -p dynamowave-lambda --bin dynamowave-lambda --target "$triple.$GLIBC_MAX"

target_dir="${CARGO_TARGET_DIR:-$root/target}"
bin="$target_dir/$triple/release/dynamowave-lambda"
[ -x "$bin" ] || { echo "build.sh: no binary at $bin" >&2; exit 1; }

# The glibc check: the highest GLIBC_x.y any dynamic symbol needs must be <= 2.34.
highest="$(objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/^GLIBC_//' | sort -uV | tail -n1)"
if [ -z "$highest" ]; then
    echo "build.sh: objdump -T found no GLIBC symbol versions in $bin (not dynamically linked against glibc?)" >&2
    exit 1
fi
if [ "$(printf '%s\n%s\n' "$highest" "$GLIBC_MAX" | sort -V | tail -n1)" != "$GLIBC_MAX" ]; then
    echo "glibc check FAILED: $bin needs GLIBC_$highest, newer than Amazon Linux 2023's $GLIBC_MAX:" >&2
    objdump -T "$bin" | grep -E "GLIBC_$highest([^0-9.]|\$)" >&2 || true
    exit 1
fi
echo "glibc check ok: highest symbol version needed is GLIBC_$highest (limit GLIBC_$GLIBC_MAX)"

# The zip: one file, `bootstrap`, mode 0755 (the provided.* runtimes exec it). The release
# profile keeps line tables (~150 MB binary); the copy that ships drops the debug sections but
# keeps the symbol table, so panics and backtraces still name functions (~28 MB, ~10 MB zipped).
mkdir -p "$here/dist"
zip_path="$here/dist/dynamowave-lambda.zip"
bootstrap="$here/dist/bootstrap"
rm -f "$zip_path" "$bootstrap"
case "$arch" in
    x86_64) strip_tool=strip ;;
    arm64) strip_tool=aarch64-linux-gnu-strip ;;
esac
if command -v "$strip_tool" >/dev/null 2>&1; then
    "$strip_tool" --strip-debug -o "$bootstrap" "$bin"
else
    echo "note: $strip_tool not found: shipping the binary with its debug sections"
    cp "$bin" "$bootstrap"
fi
"$venv/bin/python" - "$bootstrap" "$zip_path" <<'PY'
import sys, zipfile, time
src, dst = sys.argv[1], sys.argv[2]
info = zipfile.ZipInfo("bootstrap", date_time=time.localtime()[:6])
info.external_attr = (0o100755 << 16)  # regular file, rwxr-xr-x
info.create_system = 3                 # Unix, so the mode is honoured
info.compress_type = zipfile.ZIP_DEFLATED
with open(src, "rb") as f, zipfile.ZipFile(dst, "w") as z:
    z.writestr(info, f.read(), compresslevel=9)
PY
rm -f "$bootstrap"
size="$(du -h "$zip_path" | cut -f1)"
echo "built $zip_path ($size, bootstrap for $arch; template parameter Architecture=$arch)"
